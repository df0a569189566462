/**
 * The transport against the scripted control plane on a real mTLS socket: unary calls over all
 * three protocols, the Session stream (Hello, pushes, acks, heartbeats, reconnect after a drop or
 * a control-plane restart, heartbeat timeout), Watch over HTTP/1.1, and the report outbox
 * (in-order delivery, retry while the control plane is down, dropping what it rejects).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { Journal } from "../../src/agent/journal/journal.js";
import { AgentMetrics } from "../../src/agent/metrics.js";
import { type AgentConnection, connectAgentService } from "../../src/agent/transport/client.js";
import { PushChannel } from "../../src/agent/transport/push.js";
import { Reporter } from "../../src/agent/transport/reporter.js";
import { createLogger, type Logger } from "../../src/common/logger.js";
import { loadTlsMaterial } from "../../src/common/tls.js";
import type { DesiredGenerationChanged } from "../../src/gen/nixfleet/v1/agent_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { waitFor } from "../fixtures/host.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir, tempDir } from "../fixtures/tmp.js";
import { ScriptedControlPlane } from "./harness/control-plane.js";

const PATH_A = "/nix/store/0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-a";
const PATH_B = "/nix/store/1c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-b";

function captureLogger(): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk, _e, cb) {
      for (const l of chunk.toString().split("\n").filter(Boolean)) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { log: createLogger({ name: "test", level: "debug", destination: stream }), lines };
}

describe("transport (real mTLS, scripted control plane)", () => {
  const dir = makeTempDir("nixfleet-transport-");
  let pki: Pki;
  let cp: ScriptedControlPlane;
  const connections: AgentConnection[] = [];

  function connect(protocol: "grpc" | "connect" | "connect-json", cn = "web-01"): AgentConnection {
    const client = pki.client(cn);
    const c = connectAgentService({
      baseUrls: [cp.url],
      protocol,
      tls: loadTlsMaterial({ ca: pki.ca, cert: client.cert, key: client.key }),
      pingIntervalMs: 5000,
    });
    connections.push(c);
    return c;
  }

  before(async () => {
    pki = createPki(join(dir, "pki"));
    cp = await ScriptedControlPlane.start({ pki, heartbeatSeconds: 1 });
  });
  after(async () => {
    for (const c of connections) c.close();
    await cp.stop();
    removeTempDir(dir);
  });

  for (const protocol of ["grpc", "connect", "connect-json"] as const) {
    it(`unary calls work over ${protocol}`, async () => {
      const { client } = connect(protocol);
      cp.setDesired(
        "web-01",
        { hash: PATH_A, cacheUrl: "https://cache.example" },
        { push: false, pollHint: 5 },
      );
      const res = await client.getDesiredGeneration({ machineId: "web-01" });
      assert.equal(res.generation?.hash, PATH_A);
      assert.equal(res.generation?.cacheUrl, "https://cache.example");
      assert.equal(res.pollHintSeconds, 5);
      assert.ok((res.generation?.revision ?? 0n) > 0n);
      const before = cp.reports.length;
      await client.report({
        machineId: "web-01",
        outcome: Outcome.UP_TO_DATE,
        success: true,
        message: protocol,
      });
      assert.equal(cp.reports.length, before + 1);
      assert.equal(cp.reports.at(-1)?.message.message, protocol);
      cp.setDesired("web-01", undefined, { push: false, pollHint: undefined });
      const none = await client.getDesiredGeneration({ machineId: "web-01" });
      assert.equal(none.generation, undefined, "no desired generation is not an error");
    });
  }

  it("a certificate for another machine is refused with PERMISSION_DENIED", async () => {
    const { client } = connect("grpc", "intruder");
    await assert.rejects(client.getDesiredGeneration({ machineId: "web-01" }), (e: unknown) => {
      return ConnectError.from(e).code === Code.PermissionDenied;
    });
  });

  function channel(
    conn: AgentConnection,
    mode: "session" | "watch",
    events: string[],
    pushes: DesiredGenerationChanged[],
    log: Logger,
    firstMessageTimeoutMs?: number,
  ) {
    return new PushChannel({
      firstMessageTimeoutMs,
      client: conn.client,
      mode,
      identity: { machineId: "web-01", tags: ["web"], agentVersion: "test", currentGeneration: () => PATH_A },
      heartbeatIntervalMs: 200,
      log,
      reconnect: { baseMs: 50, maxMs: 200 },
      handlers: {
        onDesired: (c) => {
          pushes.push(c);
          events.push(`desired:${c.generation?.hash ?? "none"}`);
        },
        onPollHint: (s) => events.push(`hint:${s}`),
        onCheckNow: () => events.push("check"),
        onConnectedChange: (c) => events.push(c ? "up" : "down"),
      },
    });
  }

  it("Session: Hello, the current assignment, pushes acknowledged, heartbeats, reconnect after drops and restarts", async () => {
    const { log } = captureLogger();
    const events: string[] = [];
    const pushes: DesiredGenerationChanged[] = [];
    const first = cp.setDesired("web-01", { hash: PATH_A }, { push: false });
    const conn = connect("grpc");
    const ch = channel(conn, "session", events, pushes, log);
    ch.start();
    try {
      await waitFor("connected", () => ch.connected);
      assert.deepEqual(events.slice(0, 2), ["up", `desired:${PATH_A}`]);
      const hello = cp.hellos.at(-1)!;
      assert.deepEqual([hello.machineId, hello.currentGeneration, hello.tags], ["web-01", PATH_A, ["web"]]);
      await waitFor("ack of the initial assignment", () =>
        cp.acks.some((a) => a.revision === first!.revision),
      );

      const second = cp.setDesired("web-01", { hash: PATH_B });
      await waitFor("push of B", () => events.includes(`desired:${PATH_B}`));
      await waitFor("ack of B", () => cp.acks.some((a) => a.revision === second!.revision));
      assert.equal(pushes.at(-1)?.generation?.revision, second!.revision);
      cp.checkNow("web-01");
      await waitFor("check now", () => events.includes("check"));
      await waitFor("agent heartbeats", () => cp.heartbeats.length >= 2);

      // The control plane ends the stream: the agent notices and reconnects.
      const hellos = cp.hellos.length;
      cp.dropStreams();
      await waitFor("down after drop", () => events.filter((e) => e === "down").length >= 1);
      await waitFor("reconnected", () => cp.hellos.length > hellos && ch.connected);

      // The control plane restarts (same port): down, then up again.
      await cp.stop();
      await waitFor("down after stop", () => !ch.connected);
      await cp.start();
      await waitFor("reconnected after restart", () => ch.connected, 30_000);
      assert.ok(events.filter((e) => e === "up").length >= 3);
    } finally {
      await ch.stop();
    }
    assert.equal(ch.connected, false);
  });

  it("Session: a control plane that stops talking is dropped after three missed heartbeats", async () => {
    const { log, lines } = captureLogger();
    const events: string[] = [];
    const conn = connect("grpc");
    const ch = channel(conn, "session", events, [], log);
    ch.start();
    try {
      await waitFor("connected", () => ch.connected);
      // Once the control plane has sent heartbeats, the agent knows its interval and watches it.
      const sent = cp.heartbeatsSent;
      await waitFor("control-plane heartbeats on the stream", () => cp.heartbeatsSent >= sent + 2);
      cp.silentStreams = true;
      await waitFor(
        "the heartbeat watchdog",
        () =>
          lines.some(
            (l) =>
              l["event"] === "stream_error" && /no message from the control plane/.test(String(l["error"])),
          ),
        30_000,
      );
      assert.ok(events.includes("down"));
    } finally {
      cp.silentStreams = false;
      await ch.stop();
    }
  });

  it("Session: a control plane that accepts the stream but never sends its first message is dropped", async () => {
    const { log, lines } = captureLogger();
    const events: string[] = [];
    cp.silentStreams = true;
    const ch = channel(connect("grpc"), "session", events, [], log, 1000);
    ch.start();
    try {
      await waitFor(
        "the first-message watchdog",
        () =>
          lines.some(
            (l) =>
              l["event"] === "stream_error" && /no message from the control plane/.test(String(l["error"])),
          ),
        30_000,
      );
      assert.ok(!events.includes("up"), "never counted as connected");
      // It keeps retrying; once the control plane answers, the stream comes up.
      cp.silentStreams = false;
      await waitFor("connected once the control plane answers", () => ch.connected, 30_000);
    } finally {
      cp.silentStreams = false;
      await ch.stop();
    }
  });

  it("Session also runs over the Connect protocol (binary, HTTP/2)", async () => {
    const { log } = captureLogger();
    const events: string[] = [];
    cp.setDesired("web-01", { hash: PATH_A }, { push: false });
    const conn = connect("connect");
    assert.equal(conn.supportsSession, true);
    const ch = channel(conn, "session", events, [], log);
    ch.start();
    try {
      await waitFor("connected", () => ch.connected);
      const pushed = cp.setDesired("web-01", { hash: PATH_B })!;
      await waitFor("push over Connect", () => events.includes(`desired:${PATH_B}`));
      await waitFor("ack over Connect", () => cp.acks.some((a) => a.revision === pushed.revision));
    } finally {
      await ch.stop();
    }
  });

  it("Watch over connect-json (HTTP/1.1) delivers pushes", async () => {
    const { log } = captureLogger();
    const events: string[] = [];
    cp.setDesired("web-01", { hash: PATH_A }, { push: false });
    const conn = connect("connect-json");
    assert.equal(conn.supportsSession, false);
    const ch = channel(conn, "watch", events, [], log);
    ch.start();
    try {
      await waitFor("connected", () => ch.connected);
      cp.setDesired("web-01", { hash: PATH_B });
      await waitFor("push over Watch", () => events.includes(`desired:${PATH_B}`));
      assert.ok(cp.calls["watch"]! > 0);
    } finally {
      await ch.stop();
    }
  });

  it("the outbox delivers reports in order, keeps them while the control plane is down, and drops what it rejects", async (t) => {
    const { log, lines } = captureLogger();
    const { journal } = Journal.open(join(tempDir(t), "s.db"));
    const reporters: Reporter[] = [];
    // One hook, in this order: reporters stop before the journal they write to closes.
    t.after(() => {
      for (const r of reporters) r.stop();
      journal.close();
    });
    const conn = connect("grpc");
    const metrics = new AgentMetrics();
    const reporter = new Reporter({
      journal,
      client: conn.client,
      log,
      metrics,
      requestTimeoutMs: 2000,
      backoff: { baseMs: 50, maxMs: 200 },
    });
    reporters.push(reporter);
    const base = { machineId: "web-01", timestamp: timestampFromMs(Date.now()) };
    const from = cp.reports.length;

    cp.failWith = Code.Unavailable;
    reporter.report({ ...base, outcome: Outcome.APPLYING, message: "1" });
    reporter.report({ ...base, outcome: Outcome.ROLLED_BACK, message: "2" });
    reporter.report({ ...base, outcome: Outcome.ROLLBACK_FAILED, message: "3" });
    await waitFor("a failed attempt", () => lines.some((l) => l["event"] === "report_failed"));
    // The APPLYING report is superseded by the outcomes queued behind it (on the pass after the
    // failed one); the outcomes wait.
    await waitFor("the superseded APPLYING report to be dropped", () => journal.outboxCount() === 2);
    assert.deepEqual(
      journal.outbox().map((i) => i.outcome),
      ["ROLLED_BACK", "ROLLBACK_FAILED"],
      "nothing that matters is lost while the control plane is unavailable",
    );
    assert.equal((await metrics.reportsPending.get()).values[0]?.value, 2);
    const backlog = (await metrics.reportsBacklog.get()).values;
    assert.equal(backlog.find((v) => v.labels["kind"] === "outcome")?.value, 2, "the backlog per kind");
    assert.equal(backlog.find((v) => v.labels["kind"] === "status")?.value, 0);

    cp.failWith = undefined;
    await waitFor("delivery after recovery", () => journal.outboxCount() === 0, 30_000);
    const delivered = cp.reports.slice(from).map((r) => r.message.message);
    assert.deepEqual(delivered, ["2", "3"], "in order; the APPLYING report superseded by later ones");

    // Survives a restart of the agent: a new Reporter on the same journal sends what is queued.
    cp.failWith = Code.Unavailable;
    reporter.report({ ...base, outcome: Outcome.DEPLOYED, message: "after-restart" });
    await waitFor("failed attempt", () => journal.outbox()[0]?.attempts === 1);
    reporter.stop();
    cp.failWith = undefined;
    const again = new Reporter({
      journal,
      client: conn.client,
      log,
      metrics,
      requestTimeoutMs: 2000,
      backoff: { baseMs: 50, maxMs: 200 },
    });
    reporters.push(again);
    await again.flush();
    assert.equal(cp.reports.at(-1)?.message.message, "after-restart");

    // INVALID_ARGUMENT for a report valid by the agent's own rules (an older control plane that
    // does not know an enum value this agent sends): kept, logged loudly, retried — and the
    // reports behind it are not held up.
    cp.failWith = Code.InvalidArgument;
    again.report({ ...base, outcome: 42 as Outcome, message: "from a newer agent" });
    await waitFor("the refusal", () => lines.some((l) => l["event"] === "report_refused"));
    assert.equal(journal.outboxCount(), 1, "a valid report is never dropped on INVALID_ARGUMENT");
    const refused = lines.find((l) => l["event"] === "report_refused")!;
    assert.equal(refused["level"], "error", "logged as an error");
    assert.equal(refused["outcome"], "UNKNOWN(42)");
    cp.failWith = undefined;
    again.report({ ...base, outcome: Outcome.DEPLOYED, message: "behind it" });
    await waitFor("the upgraded control plane takes both", () => journal.outboxCount() === 0, 30_000);
    assert.deepEqual(
      cp.reports
        .slice(-2)
        .map((r) => r.message.message)
        .sort(),
      ["behind it", "from a newer agent"],
    );

    // A report malformed by the agent's own rules is dropped, not retried forever.
    cp.failWith = Code.InvalidArgument;
    again.report({ ...base, machineId: "not a machine id!", outcome: Outcome.DEPLOYED, message: "bad" });
    await again.flush();
    cp.failWith = undefined;
    assert.equal(journal.outboxCount(), 0);
    const rejected = lines.find((l) => l["event"] === "report_rejected" && l["code"] === "InvalidArgument");
    assert.match(String(rejected?.["problem"]), /^machine_id: /);
  });
});
