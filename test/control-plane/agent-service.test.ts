import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { HealthCheckKind, MachineLifecycle, Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness, type Protocol } from "./harness.js";
import { storePath, waitFor } from "./helpers.js";

async function code(p: Promise<unknown>): Promise<Code> {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err).code;
  }
  assert.fail("the call succeeded");
}

async function rejects(p: Promise<unknown>, expected: Code, message?: RegExp): Promise<void> {
  try {
    await p;
  } catch (err) {
    const e = ConnectError.from(err);
    assert.equal(Code[e.code], Code[expected], e.message);
    if (message) assert.match(e.rawMessage, message);
    return;
  }
  assert.fail(`expected ${Code[expected]}, the call succeeded`);
}

describe("AgentService over mTLS", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let foreign: Pki;
  let h: Harness;
  before(async () => {
    pki = createPki(join(dir, "pki"));
    foreign = createPki(join(dir, "foreign"));
    h = await Harness.start(pki);
  });
  after(async () => {
    await h.close();
    removeTempDir(dir);
  });

  for (const protocol of ["grpc", "connect", "connect-h1", "grpc-web"] as Protocol[]) {
    it(`${protocol}: a machine with nothing assigned gets no generation and no poll hint (not an error)`, async () => {
      const res = await h.agent("idle-01", { protocol }).getDesiredGeneration({ machineId: "idle-01" });
      assert.equal(res.generation, undefined);
      assert.equal(res.pollHintSeconds, undefined);
    });
  }

  it("the first report registers the machine (ACTIVE) with its tags; later reports replace the tags", async () => {
    const agent = h.agent("web-01");
    const current = storePath("nixos-system-web-01", 1);
    await agent.report({
      machineId: "web-01",
      currentGeneration: current,
      success: true,
      outcome: Outcome.UP_TO_DATE,
      tags: ["web", "eu-west"],
      agentVersion: "0.2.0",
      uptimeSeconds: 99n,
    });
    const { machine } = await h.fleet("readonly").getMachine({ machineId: "web-01" });
    assert.equal(machine?.lifecycle, MachineLifecycle.ACTIVE);
    assert.deepEqual(machine?.tags, ["eu-west", "web"]);
    assert.equal(machine?.currentGeneration, current);
    assert.equal(machine?.agentVersion, "0.2.0");
    assert.equal(machine?.uptimeSeconds, 99n);
    assert.equal(machine?.lastOutcome, Outcome.UP_TO_DATE);
    await agent.report({
      machineId: "web-01",
      currentGeneration: current,
      outcome: Outcome.UP_TO_DATE,
      tags: ["db"],
    });
    assert.deepEqual((await h.fleet("readonly").getMachine({ machineId: "web-01" })).machine?.tags, ["db"]);
  });

  it("returns what was assigned: path, cache_url, revision, set_at", async () => {
    await h.agent("web-02").report({ machineId: "web-02", outcome: Outcome.UP_TO_DATE });
    const target = storePath("nixos-system-web-02", 2);
    await h.fleet("deploy").setDesiredGeneration({
      machineId: "web-02",
      storePath: target,
      cacheUrl: "https://cache.example.org",
    });
    const res = await h.agent("web-02").getDesiredGeneration({ machineId: "web-02" });
    assert.equal(res.generation?.hash, target);
    assert.equal(res.generation?.cacheUrl, "https://cache.example.org");
    assert.ok((res.generation?.revision ?? 0n) > 0n);
    assert.ok(Math.abs(timestampMs(res.generation!.setAt!) - Date.now()) < 60_000);
    assert.equal(res.pollHintSeconds, undefined, "no poll hint outside a rollout");
  });

  it("health reports are bound to a generation and summarised on the machine", async () => {
    const g = storePath("nixos-system-web-03", 1);
    await h.agent("web-03").reportHealth({
      machineId: "web-03",
      currentGeneration: g,
      allPassed: false,
      results: [
        {
          name: "nginx.service",
          kind: HealthCheckKind.SYSTEMD,
          passed: false,
          durationMs: 4,
          message: "inactive",
        },
        { name: "http://localhost/", kind: HealthCheckKind.HTTP, passed: true, durationMs: 9 },
      ],
    });
    const status = await h.fleet("readonly").getFleetStatus({});
    const m = status.machines.find((x) => x.machineId === "web-03");
    assert.equal(m?.health?.generation, g);
    assert.deepEqual(m?.health?.failingChecks, ["nginx.service"]);
  });

  describe("identity", () => {
    it("no client certificate → UNAUTHENTICATED, on every RPC and both protocols", async () => {
      for (const protocol of ["grpc", "connect-h1"] as Protocol[]) {
        const anon = h.agent("web-01", { protocol, cert: null });
        await rejects(
          anon.getDesiredGeneration({ machineId: "web-01" }),
          Code.Unauthenticated,
          /no client certificate/,
        );
        await rejects(anon.report({ machineId: "web-01" }), Code.Unauthenticated);
        await rejects(
          anon.reportHealth({ machineId: "web-01", currentGeneration: storePath("x") }),
          Code.Unauthenticated,
        );
      }
    });

    it("a certificate from another CA → UNAUTHENTICATED", async () => {
      const stranger = h.agent("web-01", { cert: foreign.client("web-01") });
      await rejects(
        stranger.getDesiredGeneration({ machineId: "web-01" }),
        Code.Unauthenticated,
        /not accepted/,
      );
    });

    it("CN ≠ machine_id → PERMISSION_DENIED, and nothing is recorded", async () => {
      const web01 = h.agent("web-01");
      await rejects(
        web01.getDesiredGeneration({ machineId: "web-09" }),
        Code.PermissionDenied,
        /for machine web-01, not web-09/,
      );
      await rejects(
        web01.report({ machineId: "web-09", outcome: Outcome.UP_TO_DATE }),
        Code.PermissionDenied,
      );
      await rejects(
        web01.reportHealth({ machineId: "web-09", currentGeneration: storePath("x") }),
        Code.PermissionDenied,
      );
      await rejects(h.fleet("readonly").getMachine({ machineId: "web-09" }), Code.NotFound);
    });

    it("streams check identity too", async () => {
      const web01 = h.agent("web-01");
      await rejects(
        (async () => {
          for await (const _ of web01.watch({ machineId: "web-09" })) break;
        })(),
        Code.PermissionDenied,
      );
      await rejects(
        (async () => {
          async function* hello() {
            yield { message: { case: "hello" as const, value: { machineId: "web-09" } } };
          }
          for await (const _ of web01.session(hello())) break;
        })(),
        Code.PermissionDenied,
      );
      const anon = h.agent("web-01", { cert: null });
      await rejects(
        (async () => {
          for await (const _ of anon.watch({ machineId: "web-01" })) break;
        })(),
        Code.Unauthenticated,
      );
    });
  });

  describe("bad input is INVALID_ARGUMENT naming the field, and nothing is stored", () => {
    const g = storePath("nixos-system-bad-01");
    const cases: [string, Record<string, unknown>, RegExp][] = [
      [
        "a store path with a shell metacharacter",
        { currentGeneration: "/nix/store/0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-x;rm" },
        /^current_generation:/,
      ],
      [
        "a path outside the store",
        { currentGeneration: "/etc/passwd" },
        /^current_generation: must start with \/nix\/store/,
      ],
      ["a path with ..", { desiredGeneration: "/nix/store/../etc" }, /^desired_generation:/],
      ["an oversized message", { message: "x".repeat(5000) }, /^message: is 5000 bytes long; at most 4096/],
      ["a bad tag", { tags: ["ok", "not ok"] }, /^tags\[1\]:/],
      ["a multi-line agent version", { agentVersion: "1\n2" }, /^agent_version:/],
      ["a bad deployment id", { deploymentId: "a b" }, /^deployment_id:/],
    ];
    for (const [name, fields, message] of cases) {
      it(name, async () => {
        await rejects(
          h.agent("bad-01").report({ machineId: "bad-01", currentGeneration: g, ...fields }),
          Code.InvalidArgument,
          message,
        );
        await rejects(h.fleet("readonly").getMachine({ machineId: "bad-01" }), Code.NotFound);
      });
    }
    it("a malformed machine id", async () => {
      await rejects(
        h.agent("bad-01").getDesiredGeneration({ machineId: "../etc" }),
        Code.InvalidArgument,
        /^machine_id:/,
      );
      await rejects(
        h.agent("bad-01").getDesiredGeneration({ machineId: "x".repeat(200) }),
        Code.InvalidArgument,
        /at most 128/,
      );
    });
    it("a health report without a generation, or with bad results", async () => {
      await rejects(
        h.agent("bad-01").reportHealth({ machineId: "bad-01" }),
        Code.InvalidArgument,
        /^current_generation: must be the store path/,
      );
      await rejects(
        h
          .agent("bad-01")
          .reportHealth({ machineId: "bad-01", currentGeneration: g, results: [{ name: "", passed: true }] }),
        Code.InvalidArgument,
        /^results\[0\]\.name/,
      );
      await rejects(
        h.agent("bad-01").reportHealth({
          machineId: "bad-01",
          currentGeneration: g,
          results: Array(300).fill({ name: "x", passed: true }),
        }),
        Code.InvalidArgument,
        /^results: at most 256/,
      );
    });
    it("an oversized request body → RESOURCE_EXHAUSTED", async () => {
      assert.equal(
        await code(h.agent("bad-01").report({ machineId: "bad-01", message: "x".repeat(5 * 1024 * 1024) })),
        Code.ResourceExhausted,
      );
      await rejects(h.fleet("readonly").getMachine({ machineId: "bad-01" }), Code.NotFound);
    });
  });
});

describe("AgentService start-up and insecure mode", () => {
  const dir = makeTempDir();
  let pki: Pki;
  before(() => {
    pki = createPki(join(dir, "pki"));
  });
  after(() => removeTempDir(dir));

  it("answers UNAVAILABLE (and /readyz 503) until the database is migrated", async () => {
    const h = await Harness.start(pki, { listenOnly: true });
    try {
      await rejects(
        h.agent("web-01").getDesiredGeneration({ machineId: "web-01" }),
        Code.Unavailable,
        /starting/,
      );
      await rejects(h.fleet("x".repeat(4)).listMachines({}), Code.Unavailable);
      assert.equal(h.cp.phase, "starting");
      await h.cp.initialize();
      await h.createKeys();
      const res = await h.agent("web-01").getDesiredGeneration({ machineId: "web-01" });
      assert.equal(res.generation, undefined);
    } finally {
      await h.close();
    }
  });

  it("--allow-insecure: plain HTTP/2 (h2c) and HTTP/1.1 on one port; the claimed id is taken", async () => {
    const h = await Harness.start(pki, { allowInsecure: true });
    try {
      assert.match(h.url, /^http:\/\//);
      for (const protocol of ["grpc", "connect-h1"] as Protocol[]) {
        const agent = h.agent("anything", { protocol, cert: null });
        await agent.report({ machineId: `dev-${protocol}`, outcome: Outcome.UP_TO_DATE, tags: ["dev"] });
        const res = await agent.getDesiredGeneration({ machineId: `dev-${protocol}` });
        assert.equal(res.generation, undefined);
      }
      const machines = await waitFor("both machines listed", async () => {
        const r = await h.fleet("readonly", "connect-h1").listMachines({ tags: ["dev"] });
        return r.machines.length === 2 ? r.machines : null;
      });
      assert.deepEqual(
        machines.map((m) => m.machineId),
        ["dev-connect-h1", "dev-grpc"],
      );
      // API keys are still required for FleetService.
      await rejects(h.fleet(null).listMachines({}), Code.Unauthenticated);
    } finally {
      await h.close();
    }
  });
});
