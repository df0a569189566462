/** Every .nix file in the repository parses (`nix-instantiate --parse`), and a broken one fails. */
import assert from "node:assert/strict";
import { readdirSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { describe, it } from "node:test";
import { tempDir } from "../fixtures/tmp.js";
import { NixEvalError, parseFile, REPO } from "./nix-eval.js";

const SKIP = new Set(["node_modules", ".git", "dist", "result"]);

function nixFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (SKIP.has(entry.name)) continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...nixFiles(path));
    else if (entry.isFile() && entry.name.endsWith(".nix")) out.push(path);
  }
  return out;
}

describe("nix-instantiate --parse", () => {
  const files = nixFiles(REPO);

  it("finds the flake, the package, both modules, the VM tests and the test harness", () => {
    const rel = files.map((f) => relative(REPO, f));
    for (const expected of [
      "flake.nix",
      "nix/package.nix",
      "nix/npm-lock-for-platform.nix",
      "nix/modules/agent.nix",
      "nix/modules/agent-config.nix",
      "nix/modules/control-plane.nix",
      "nix/tests/default.nix",
      "nix/tests/fleet.nix",
      "test/nix/lib.nix",
      "test/nix/eval.nix",
    ]) {
      assert.ok(rel.includes(expected), `${expected} not found among ${rel.join(", ")}`);
    }
  });

  for (const file of files) {
    it(`parses ${relative(REPO, file)}`, async () => {
      await parseFile(file);
    });
  }

  it("reports a syntax error with its location", async (t) => {
    const bad = join(tempDir(t), "bad.nix");
    writeFileSync(bad, "{ a = 1; b = ; }\n");
    await assert.rejects(parseFile(bad), (err: Error) => {
      assert.ok(err instanceof NixEvalError);
      assert.match(err.stderr, /syntax error/);
      assert.match(err.stderr, /bad\.nix:1/);
      return true;
    });
  });
});
