/**
 * End-to-end, scenario 11, with curl and the real agent as the clients: no client certificate is
 * refused; a certificate whose CN is not the machine id is PERMISSION_DENIED (and the agent itself
 * refuses to start with one); a readonly key cannot start rollouts; an unknown key is
 * UNAUTHENTICATED; malformed store paths and oversized inputs are INVALID_ARGUMENT (or
 * RESOURCE_EXHAUSTED) and nothing is stored.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  GetFleetStatusResponseSchema,
  ListMachinesResponseSchema,
  ListReleasesResponseSchema,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { Fleet, waitFor } from "../fixtures/fleet.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

interface Curl {
  status: number;
  body: { code?: string; message?: string } & Record<string, unknown>;
  exitCode: number;
  stderr: string;
}

describe("e2e: security", () => {
  const dir = makeTempDir("nixfleet-e2e-security-");
  let fleet: Fleet;

  /** A Connect JSON call with curl: the foreign client an operator's script would be. */
  function curl(
    procedure: string,
    body: unknown,
    opts: { cert?: string; key?: string; apiKey?: string; bodyFile?: string } = {},
  ): Promise<Curl> {
    const args = [
      "-sS",
      "--cacert",
      fleet.pki.ca,
      "-o",
      "-",
      "-w",
      "\n%{http_code}",
      "-H",
      "content-type: application/json",
    ];
    if (opts.cert) args.push("--cert", opts.cert, "--key", opts.key!);
    if (opts.apiKey) args.push("-H", `authorization: Bearer ${opts.apiKey}`);
    args.push(
      "--data-binary",
      opts.bodyFile ? `@${opts.bodyFile}` : JSON.stringify(body),
      `${fleet.cp.url}/${procedure}`,
    );
    return new Promise((resolve) => {
      execFile("curl", args, { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
        const nl = stdout.lastIndexOf("\n");
        let parsed: Curl["body"] = {};
        try {
          parsed = JSON.parse(stdout.slice(0, nl) || "{}");
        } catch {
          parsed = { raw: stdout.slice(0, nl) };
        }
        resolve({
          status: Number(stdout.slice(nl + 1)),
          body: parsed,
          exitCode: err ? Number((err as { code?: number }).code ?? 1) : 0,
          stderr,
        });
      });
    });
  }

  before(async () => {
    fleet = await Fleet.create({ dir, hosts: [{ name: "sec-01", tags: ["sec"] }] });
    fleet.startAgent("sec-01");
    await waitFor(
      "sec-01 to register",
      async () => (await fleet.status()).machines.some((m) => m.machineId === "sec-01" && m.connected),
      60_000,
    );
  });

  after(async () => {
    await fleet?.close();
    removeTempDir(dir);
  });

  it(
    "agent RPCs: no client certificate is UNAUTHENTICATED; another machine's certificate is PERMISSION_DENIED",
    { timeout: 120_000 },
    () =>
      fleet.explain(async () => {
        const none = await curl("nixfleet.v1.AgentService/GetDesiredGeneration", { machineId: "sec-01" });
        assert.equal(none.body.code, "unauthenticated", JSON.stringify(none));
        const other = fleet.pki.client("sec-02");
        const spoof = await curl(
          "nixfleet.v1.AgentService/Report",
          {
            machineId: "sec-01",
            outcome: "OUTCOME_UP_TO_DATE",
            currentGeneration: fleet.host("sec-01").systems["base"]!.path,
          },
          { cert: other.cert, key: other.key },
        );
        assert.equal(spoof.body.code, "permission_denied", JSON.stringify(spoof));
        assert.match(String(spoof.body.message), /sec-02/);
        const own = await curl(
          "nixfleet.v1.AgentService/GetDesiredGeneration",
          { machineId: "sec-02" },
          { cert: other.cert, key: other.key },
        );
        assert.equal(own.status, 200, "its own id is fine");
      }),
  );

  it(
    "an agent given a certificate for another machine refuses to start, saying why",
    { timeout: 120_000 },
    () =>
      fleet.explain(async () => {
        const h = fleet.host("sec-01");
        const wrong = fleet.pki.client("someone-else");
        await h.agent!.stop();
        h.host.writeConfig({
          controlPlaneUrl: fleet.cp.url,
          tls: { caCert: fleet.pki.ca, clientCert: wrong.cert, clientKey: wrong.key },
        });
        const agent = h.host.startAgent();
        const exit = await agent.exited;
        assert.equal(exit.code, 78, "a configuration error");
        assert.match(agent.rawOutput.join("") + agent.tail(), /someone-else/);
        fleet.startAgent("sec-01");
      }),
  );

  it(
    "API keys: unknown is UNAUTHENTICATED, readonly cannot start rollouts, revoked stops working",
    { timeout: 120_000 },
    () =>
      fleet.explain(async () => {
        const unknown = await curl(
          "nixfleet.v1.FleetService/GetFleetStatus",
          {},
          { apiKey: `nfk-${"ab".repeat(32)}` },
        );
        assert.equal(unknown.body.code, "unauthenticated");
        const missing = await curl("nixfleet.v1.FleetService/GetFleetStatus", {});
        assert.equal(missing.body.code, "unauthenticated");
        const reader = (
          await fleet.cliOk(["keys", "create", "--name", "sec-reader", "--role", "readonly"], { human: true })
        ).stdout.trim();
        const status = await curl("nixfleet.v1.FleetService/GetFleetStatus", {}, { apiKey: reader });
        assert.equal(status.status, 200);
        const rollout = await curl(
          "nixfleet.v1.FleetService/CreateRollout",
          { releaseId: "rel-00000000-0000-4000-8000-000000000000", target: { tags: ["sec"] } },
          { apiKey: reader },
        );
        assert.equal(rollout.body.code, "permission_denied");
        assert.match(String(rollout.body.message), /readonly.*deploy/);
        await fleet.cliOk(["keys", "revoke", "sec-reader"]);
        const revoked = await curl("nixfleet.v1.FleetService/GetFleetStatus", {}, { apiKey: reader });
        assert.equal(revoked.body.code, "unauthenticated");
      }),
  );

  it(
    "malformed store paths and oversized inputs are refused with the field named, and nothing is stored",
    { timeout: 120_000 },
    () =>
      fleet.explain(async () => {
        const key = fleet.adminKey;
        const releasesBefore = (
          await fleet.cliAs(ListReleasesResponseSchema, ["release", "list", "--limit", "500"])
        ).releases.length;
        const machinesBefore = (
          await fleet.cliAs(ListMachinesResponseSchema, ["machines", "list"])
        ).machines.map((m) => m.machineId);

        const badPaths = [
          "/nix/store/short-x",
          "/etc/passwd",
          `/nix/store/${"a".repeat(32)}-x;reboot`,
          `/nix/store/${"a".repeat(32)}-x/../../etc`,
          `/nix/store/${"a".repeat(32)}-$(id)`,
        ];
        for (const storePath of badPaths) {
          const r = await curl(
            "nixfleet.v1.FleetService/CreateRelease",
            { entries: [{ hostname: "sec-01", storePath }] },
            { apiKey: key },
          );
          assert.equal(r.body.code, "invalid_argument", `${storePath}: ${JSON.stringify(r.body)}`);
          assert.match(String(r.body.message), /entries\[0\]\.store_path|store_path|storePath/, storePath);
        }
        const setBad = await curl(
          "nixfleet.v1.FleetService/SetDesiredGeneration",
          { machineId: "sec-01", storePath: "/nix/store/nope" },
          { apiKey: key },
        );
        assert.equal(setBad.body.code, "invalid_argument");
        const longId = await curl(
          "nixfleet.v1.FleetService/RegisterMachine",
          { machineId: "x".repeat(10_000) },
          { apiKey: key },
        );
        assert.equal(longId.body.code, "invalid_argument");
        assert.match(String(longId.body.message), /machine_id/);
        const manyTags = await curl(
          "nixfleet.v1.FleetService/RegisterMachine",
          { machineId: "sec-tags", tags: Array.from({ length: 500 }, (_, i) => `t${i}`) },
          { apiKey: key },
        );
        assert.equal(manyTags.body.code, "invalid_argument");

        // An agent's own report with a malformed generation is refused too.
        const agentCert = fleet.pki.client("sec-01");
        const badReport = await curl(
          "nixfleet.v1.AgentService/Report",
          { machineId: "sec-01", currentGeneration: "/tmp/evil", outcome: "OUTCOME_DEPLOYED" },
          { cert: agentCert.cert, key: agentCert.key },
        );
        assert.equal(badReport.body.code, "invalid_argument");

        // A body over the server's message limit is refused before it is parsed.
        const huge = join(dir, "huge.json");
        writeFileSync(
          huge,
          JSON.stringify({
            entries: Array.from({ length: 60_000 }, (_, i) => ({
              hostname: `h-${i}`,
              storePath: `/nix/store/${"a".repeat(32)}-${"n".repeat(60)}`,
            })),
          }),
        );
        const big = await curl("nixfleet.v1.FleetService/CreateRelease", undefined, {
          apiKey: key,
          bodyFile: huge,
        });
        assert.ok(
          ["resource_exhausted", "invalid_argument"].includes(String(big.body.code)),
          JSON.stringify(big.body).slice(0, 300),
        );

        const releasesAfter = (
          await fleet.cliAs(ListReleasesResponseSchema, ["release", "list", "--limit", "500"])
        ).releases.length;
        assert.equal(releasesAfter, releasesBefore, "no release was stored");
        const machinesAfter = (
          await fleet.cliAs(ListMachinesResponseSchema, ["machines", "list"])
        ).machines.map((m) => m.machineId);
        assert.deepEqual(machinesAfter, machinesBefore, "no machine was stored");
        const status = await fleet.cliAs(GetFleetStatusResponseSchema, ["status"]);
        assert.equal(
          status.machines.find((m) => m.machineId === "sec-01")?.currentGeneration,
          fleet.host("sec-01").systems["base"]!.path,
          "the bad report changed nothing",
        );
      }),
  );
});
