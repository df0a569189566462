/**
 * /metrics after a real cycle: every metric control-plane.md documents is there, with values
 * that match what happened, and request metrics carry no machine ids.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import type { AgentMessage } from "../../src/gen/nixfleet/v1/agent_pb.js";
import { RolloutStatus, RolloutStrategy } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle } from "../../src/gen/nixfleet/v1/types_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness } from "./harness.js";
import { Feed, Inbox, storePath, waitFor } from "./helpers.js";
import { SimAgent } from "./sim-agent.js";

const exec = promisify(execFile);

function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = /^([a-z_:]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return undefined;
}

describe("control-plane metrics", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  before(async () => {
    pki = createPki(join(dir, "pki"));
    h = await Harness.start(pki, { executorTickMs: 50 });
  });
  after(async () => {
    await h.close();
    removeTempDir(dir);
  });

  async function scrape(): Promise<string> {
    const { stdout } = await exec("curl", ["-sS", "--fail", "--cacert", pki.ca, `${h.url}/metrics`]);
    return stdout;
  }

  it("documents the fleet, rollouts, RPCs, sessions and push latency after a real cycle", async () => {
    const a = new SimAgent("mx-01", storePath("sys-mx-01", 1), ["mx"], h);
    const b = new SimAgent("mx-02", storePath("sys-mx-02", 1), ["mx"], h);
    await a.register();
    await b.register();
    await h.fleet("admin").registerMachine({ machineId: "mx-03", tags: ["mx"] });
    await h.fleet("admin").registerMachine({ machineId: "mx-04", lifecycle: MachineLifecycle.ACTIVE });
    await h
      .fleet("admin")
      .setMachineLifecycle({ machineId: "mx-04", lifecycle: MachineLifecycle.MAINTENANCE });

    // An agent holding a Session acknowledges the push it receives.
    const feed = new Feed<Partial<AgentMessage>>();
    feed.push({ message: { case: "hello", value: { machineId: "mx-01", tags: ["mx"] } as never } });
    const inbox = new Inbox(h.agent("mx-01").session(feed as AsyncIterable<never>));
    await inbox.next("initial", () => true);

    const { release } = await h.fleet("deploy").createRelease({
      entries: ["mx-01", "mx-02"].map((id) => ({ hostname: id, storePath: storePath(`sys-${id}`, 2) })),
    });
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: release!.id,
      target: { tags: ["mx"] },
      strategy: RolloutStrategy.ALL_AT_ONCE,
    });
    const pushed = await inbox.next(
      "push",
      (m) =>
        m.message.case === "desiredGenerationChanged" &&
        m.message.value.generation?.hash === storePath("sys-mx-01", 2),
    );
    if (pushed.message.case === "desiredGenerationChanged")
      feed.push({
        message: { case: "ack", value: { revision: pushed.message.value.generation!.revision } as never },
      });

    let text = await scrape();
    assert.equal(sample(text, "nixfleet_rollouts_active"), 1);
    assert.equal(sample(text, "nixfleet_agent_sessions"), 1);

    await a.deploy();
    await b.deploy();
    await waitFor(
      "completed",
      async () =>
        (await h.fleet("readonly").getRollout({ rolloutId: rollout!.id })).rollout?.status ===
        RolloutStatus.COMPLETED,
    );
    await waitFor(
      "push latency observed",
      async () => (sample(await scrape(), "nixfleet_push_latency_seconds_count") ?? 0) >= 1,
    );

    text = await scrape();
    assert.equal(sample(text, "nixfleet_fleet_size"), 4);
    assert.equal(sample(text, "nixfleet_machines_by_lifecycle", { lifecycle: "active" }), 2);
    assert.equal(sample(text, "nixfleet_machines_by_lifecycle", { lifecycle: "pending" }), 1);
    assert.equal(sample(text, "nixfleet_machines_by_lifecycle", { lifecycle: "maintenance" }), 1);
    assert.equal(sample(text, "nixfleet_machines_by_lifecycle", { lifecycle: "decommissioned" }), 0);
    assert.equal(sample(text, "nixfleet_machines_in_sync"), 2);
    assert.equal(sample(text, "nixfleet_machines_stale"), 0, "everyone was heard from recently");
    assert.equal(sample(text, "nixfleet_rollouts_active"), 0);
    assert.equal(sample(text, "nixfleet_rollouts_total", { status: "completed" }), 1);
    assert.equal(sample(text, "nixfleet_rollouts_total", { status: "failed" }), 0);
    assert.ok(
      (sample(text, "nixfleet_rpc_requests_total", {
        procedure: "/nixfleet.v1.AgentService/Report",
        code: "ok",
      }) ?? 0) >= 6,
    );
    assert.ok(
      (sample(text, "nixfleet_rpc_requests_total", {
        procedure: "/nixfleet.v1.FleetService/CreateRollout",
        code: "ok",
      }) ?? 0) === 1,
    );
    assert.ok(
      (sample(text, "nixfleet_rpc_duration_seconds_count", {
        procedure: "/nixfleet.v1.AgentService/ReportHealth",
      }) ?? 0) >= 2,
    );
    const latency = sample(text, "nixfleet_push_latency_seconds_sum")!;
    assert.ok(latency >= 0 && latency < 60, `push latency sum ${latency}`);
    assert.equal(sample(text, "nixfleet_agent_sessions"), 1);

    // Failures are counted with their code; machine ids never appear in request metrics.
    await h
      .fleet(null)
      .listMachines({})
      .catch(() => {});
    text = await scrape();
    assert.equal(
      sample(text, "nixfleet_rpc_requests_total", {
        procedure: "/nixfleet.v1.FleetService/ListMachines",
        code: "unauthenticated",
      }),
      1,
    );
    const rpcLines = text.split("\n").filter((l) => l.startsWith("nixfleet_rpc_"));
    assert.ok(rpcLines.length > 0);
    assert.ok(!rpcLines.some((l) => /mx-0\d/.test(l)), "no machine ids in RPC metric labels");

    feed.end();
    await inbox.finished;
    await waitFor("session gone", async () => sample(await scrape(), "nixfleet_agent_sessions") === 0);
  });

  it("counts machines not heard from for longer than --stale-after, but not decommissioned ones", async () => {
    const staleDir = makeTempDir();
    // The control plane's clock is moved past --stale-after by the test rather than waited out:
    // "a moment ago" then holds however slowly a loaded machine answers.
    let ahead = 0;
    const clock = { now: () => Date.now() + ahead };
    const quick = await Harness.start(pki, { staleAfterSeconds: 300, dir: staleDir, clock });
    try {
      const scrapeQuick = async () =>
        (await exec("curl", ["-sS", "--fail", "--cacert", pki.ca, `${quick.url}/metrics`])).stdout;
      await quick
        .fleet("admin")
        .registerMachine({ machineId: "quiet-01", lifecycle: MachineLifecycle.ACTIVE });
      await quick
        .fleet("admin")
        .registerMachine({ machineId: "gone-01", lifecycle: MachineLifecycle.ACTIVE });
      await quick
        .fleet("admin")
        .setMachineLifecycle({ machineId: "gone-01", lifecycle: MachineLifecycle.DECOMMISSIONED });
      assert.equal(sample(await scrapeQuick(), "nixfleet_machines_stale"), 0, "registered a moment ago");
      ahead = 301_000;
      assert.equal(sample(await scrapeQuick(), "nixfleet_machines_stale"), 1, "quiet-01 silent for 301 s");
      const agent = new SimAgent("quiet-01", storePath("sys-quiet-01", 1), [], quick);
      await agent.register();
      assert.equal(
        sample(await scrapeQuick(), "nixfleet_machines_stale"),
        0,
        "a report makes it fresh again",
      );
    } finally {
      await quick.close();
      removeTempDir(staleDir);
    }
  });
});
