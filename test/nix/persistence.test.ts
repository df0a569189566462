/**
 * Impermanent hosts: the control plane's state directory is persisted like the agent's, and a
 * custom dbPath that persistence would not keep fails evaluation instead of being wiped at boot.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { evalModules } from "./nix-eval.js";

const TLS = `tls = { cert = "/var/lib/secrets/cp.pem"; key = "/var/lib/secrets/cp.key"; clientCa = "/var/lib/secrets/ca.pem"; };`;
const cp = (body: string) => `{ services.nixfleet-control-plane = { enable = true; ${TLS} ${body} }; }`;
const agent = (body: string) =>
  `{ services.nixfleet-agent = { enable = true; controlPlaneUrl = "https://cp"; ${body} }; }`;

describe("impermanence", () => {
  it("the control plane's /var/lib/nixfleet-cp is persisted, owned by its user, under the chosen root", async () => {
    assert.deepEqual(await evalModules("persistence", { modules: [cp("")], impermanence: true }), {
      "/persist": {
        directories: [
          { directory: "/var/lib/nixfleet-cp", user: "nixfleet-cp", group: "nixfleet-cp", mode: "0700" },
        ],
        files: [],
      },
    });
    const custom = await evalModules("persistence", {
      modules: [cp(`persistence.path = "/nix/persist";`)],
      impermanence: true,
    });
    assert.deepEqual(Object.keys(custom as object), ["/nix/persist"]);
    assert.deepEqual(
      await evalModules("persistence", { modules: [cp("persistence.enable = false;")], impermanence: true }),
      {},
    );
    // Hosts without impermanence: the option is never defined, nothing fails.
    assert.equal(await evalModules("persistence", { modules: [cp("")] }), null);
    assert.deepEqual(await evalModules("assertions", { modules: [cp(`dbPath = "/srv/cp/state.db";`)] }), []);
  });

  for (const [name, module, stateDir] of [
    ["control plane", cp, "/var/lib/nixfleet-cp"],
    ["agent", agent, "/var/lib/nixfleet"],
  ] as const) {
    it(`${name}: a dbPath persistence would not keep fails evaluation, naming it; under the state dir or the persistent root it is fine`, async () => {
      const failed = (await evalModules("assertions", {
        modules: [module(`dbPath = "/srv/fleet/state.db";`)],
        impermanence: true,
      })) as string[];
      assert.equal(failed.length, 1, JSON.stringify(failed));
      assert.match(
        failed[0]!,
        new RegExp(
          `dbPath /srv/fleet/state\\.db is outside ${stateDir}, the directory persistence keeps \\(under /persist\\)`,
        ),
      );
      for (const ok of [`${stateDir}/other.db`, "/persist/fleet/state.db"]) {
        assert.deepEqual(
          await evalModules("assertions", { modules: [module(`dbPath = "${ok}";`)], impermanence: true }),
          [],
          ok,
        );
      }
      assert.deepEqual(
        await evalModules("assertions", {
          modules: [module(`dbPath = "/srv/fleet/state.db"; persistence.enable = false;`)],
          impermanence: true,
        }),
        [],
        "persisted by the operator's own means",
      );
    });
  }
});
