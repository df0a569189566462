/** docs/nixos.md lists every option of both modules exactly as the modules declare them. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { currentSection, DOC_PATH, loadOptionDocs, nixValue, renderOptions } from "./options-doc.js";

describe("docs/nixos.md options reference", () => {
  it("is exactly what the modules declare (regenerate: node --import tsx test/nix/options-doc.ts --write)", async () => {
    const doc = readFileSync(DOC_PATH, "utf8");
    const section = currentSection(doc);
    assert.ok(section, "docs/nixos.md lacks the generated options section markers");
    assert.equal(section, renderOptions(await loadOptionDocs()));
  });

  it("names every option, with its type and default", async () => {
    const options = await loadOptionDocs();
    const doc = readFileSync(DOC_PATH, "utf8");
    assert.ok(options.length > 40, `only ${options.length} options found`);
    for (const o of options) {
      assert.ok(doc.includes(`#### \`${o.name}\``), `${o.name} is not documented`);
      assert.ok(o.description.trim().length > 0, `${o.name} has no description`);
    }
    // Submodule options appear with their list placeholder.
    for (const name of [
      "services.nixfleet-agent.healthChecks.http.*.expectedStatus",
      "services.nixfleet-agent.healthChecks.command.*.timeout",
      "services.nixfleet-agent.healthChecks.systemd.*.units",
      "services.nixfleet-control-plane.tls.key",
    ]) {
      assert.ok(
        options.some((o) => o.name === name),
        `${name} missing`,
      );
    }
  });

  it("renders values as Nix", () => {
    assert.equal(nixValue(["a", 1, true, null]), '[ "a" 1 true null ]');
    assert.equal(nixValue({ a: { "b.c": [] } }), '{ a = { "b.c" = [ ]; }; }');
    // A Nix string must not interpolate: "${" is escaped.
    const dollarBrace = "$" + "{x}";
    assert.equal(nixValue(dollarBrace), `"\\${dollarBrace}"`);
  });
});
