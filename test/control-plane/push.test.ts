/**
 * The push path: agents holding a Session (bidi, gRPC over HTTP/2) or a Watch (server stream,
 * also over HTTP/1.1) get desired-generation changes the moment they happen, without polling.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type AgentMessage,
  AgentMessageSchema,
  type ControlMessage,
} from "../../src/gen/nixfleet/v1/agent_pb.js";
import { RolloutStatus, RolloutStrategy } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness } from "./harness.js";
import { Feed, Inbox, storePath, waitFor } from "./helpers.js";

type Msg = ControlMessage;
const isDesired = (m: Msg) => m.message.case === "desiredGenerationChanged";
const desiredHash = (m: Msg) =>
  m.message.case === "desiredGenerationChanged" ? m.message.value.generation?.hash : undefined;

function hello(machineId: string, current = "", tags: string[] = []): Partial<AgentMessage> {
  return {
    message: {
      case: "hello",
      value: { machineId, currentGeneration: current, tags, agentVersion: "test" } as never,
    },
  };
}

describe("push: Session and Watch streams", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  before(async () => {
    pki = createPki(join(dir, "pki"));
    // Long heartbeats: a test slowed by a loaded machine must not see its streams timed out.
    h = await Harness.start(pki, { executorTickMs: 50, heartbeatIntervalSeconds: 600 });
  });
  after(async () => {
    await h.close();
    removeTempDir(dir);
  });

  function openSession(machineId: string, tags: string[] = ["push"]) {
    const feed = new Feed<Partial<AgentMessage>>();
    feed.push(hello(machineId, storePath(`sys-${machineId}`, 1), tags));
    const inbox = new Inbox<Msg>(h.agent(machineId).session(feed as AsyncIterable<never>));
    return { feed, inbox };
  }

  it("Hello registers the machine and gets the current assignment at once", async () => {
    const { feed, inbox } = openSession("ps-01", ["push", "eu"]);
    const first = await inbox.next("initial state", isDesired);
    assert.equal(desiredHash(first), undefined, "nothing assigned yet");
    const m = (await h.fleet("readonly").getMachine({ machineId: "ps-01" })).machine!;
    assert.deepEqual(m.tags, ["eu", "push"]);
    assert.equal(m.connected, true);
    assert.equal(m.currentGeneration, storePath("sys-ps-01", 1));
    feed.end();
    await inbox.finished;
    await waitFor(
      "disconnect noticed",
      async () => !(await h.fleet("readonly").getMachine({ machineId: "ps-01" })).machine?.connected,
    );
  });

  it("a batch start reaches a connected agent on its stream, without polling; PushAck is measured", async (t) => {
    const { feed, inbox } = openSession("ps-02");
    await inbox.next("initial state", isDesired);
    const { release } = await h
      .fleet("deploy")
      .createRelease({ entries: [{ hostname: "ps-02", storePath: storePath("sys-ps-02", 2) }] });
    const ackedBefore =
      (await h.cp.metrics.pushLatency.get()).values.find(
        (v) => v.metricName === "nixfleet_push_latency_seconds_count",
      )?.value ?? 0;
    const started = Date.now();
    const count = inbox.messages.length;
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: release!.id,
      target: { hosts: ["ps-02"] },
      strategy: RolloutStrategy.ALL_AT_ONCE,
    });
    const pushed = await inbox.next(
      "the pushed assignment",
      (m) => desiredHash(m) === storePath("sys-ps-02", 2),
      count,
    );
    const elapsed = Date.now() - started;
    // Milliseconds in-process on an idle machine (the bar is one second); reported, not
    // asserted: a loaded CI machine stretches it, and the stream delivering it is what is tested.
    t.diagnostic(`push took ${elapsed} ms`);
    assert.ok(pushed.message.case === "desiredGenerationChanged");
    assert.equal(pushed.message.value.pollHintSeconds, 5, "in an active rollout");
    assert.equal(pushed.message.value.generation?.rolloutId, rollout!.id);
    feed.push({
      message: { case: "ack", value: { revision: pushed.message.value.generation!.revision } as never },
    });
    await waitFor("push latency observed", async () => {
      const v = (await h.cp.metrics.pushLatency.get()).values.find(
        (x) => x.metricName === "nixfleet_push_latency_seconds_count",
      );
      return (v?.value ?? 0) > ackedBefore;
    });
    // Reports and health over the same stream drive the gate.
    const target = storePath("sys-ps-02", 2);
    feed.push({
      message: {
        case: "report",
        value: {
          machineId: "ps-02",
          currentGeneration: target,
          desiredGeneration: target,
          outcome: Outcome.DEPLOYED,
          success: true,
        } as never,
      },
    });
    feed.push({
      message: { case: "health", value: { currentGeneration: target, allPassed: true } as never },
    });
    await waitFor(
      "rollout completed",
      async () =>
        (await h.fleet("readonly").getRollout({ rolloutId: rollout!.id })).rollout?.status ===
        RolloutStatus.COMPLETED,
    );
    // The end of the rollout sends the agent back to its own poll interval.
    await inbox.next(
      "poll hint reset",
      (m) => m.message.case === "pollHint" && m.message.value.seconds === 0,
    );
    feed.end();
    await inbox.finished;
  });

  it("Set/ClearDesiredGeneration are pushed too", async () => {
    const { feed, inbox } = openSession("ps-03");
    await inbox.next("initial", isDesired);
    const p = storePath("sys-ps-03", 7);
    await h.fleet("deploy").setDesiredGeneration({ machineId: "ps-03", storePath: p });
    await inbox.next("set pushed", (m) => desiredHash(m) === p);
    const n = inbox.messages.length;
    await h.fleet("deploy").clearDesiredGeneration({ machineId: "ps-03" });
    const cleared = await inbox.next("clear pushed", (m) => isDesired(m), n);
    assert.equal(desiredHash(cleared), undefined);
    feed.end();
    await inbox.finished;
  });

  it("a second Session for the same machine replaces the first", async () => {
    const one = openSession("ps-04");
    await one.inbox.next("initial 1", isDesired);
    const two = openSession("ps-04");
    await two.inbox.next("initial 2", isDesired);
    await one.inbox.finished;
    assert.equal(ConnectError.from(one.inbox.error).code, Code.Aborted);
    assert.match(ConnectError.from(one.inbox.error).rawMessage, /replaced by a newer session stream/);
    const p = storePath("sys-ps-04", 3);
    await h.fleet("deploy").setDesiredGeneration({ machineId: "ps-04", storePath: p });
    await two.inbox.next("pushed to the new stream", (m) => desiredHash(m) === p);
    two.feed.end();
    await two.inbox.finished;
  });

  it("the Session must start with Hello", async () => {
    const feed = new Feed<Partial<AgentMessage>>();
    feed.push({ message: { case: "heartbeat", value: {} as never } });
    const inbox = new Inbox<Msg>(h.agent("ps-06").session(feed as AsyncIterable<never>));
    await inbox.finished;
    assert.equal(ConnectError.from(inbox.error).code, Code.InvalidArgument);
    assert.match(ConnectError.from(inbox.error).rawMessage, /first Session message must be Hello/);
    feed.end();
  });

  it("a bad report on the stream ends it with INVALID_ARGUMENT; a report for another machine with PERMISSION_DENIED", async () => {
    for (const [value, code] of [
      [{ currentGeneration: "/etc/passwd" }, Code.InvalidArgument],
      [{ machineId: "someone-else" }, Code.PermissionDenied],
    ] as const) {
      const { feed, inbox } = openSession("ps-07");
      await inbox.next("initial", isDesired);
      feed.push({ message: { case: "report", value: value as never } });
      await inbox.finished;
      assert.equal(ConnectError.from(inbox.error).code, code);
      feed.end();
    }
  });

  it("Watch works over HTTP/1.1 (Connect protocol) and receives the same pushes", async () => {
    const client = h.agent("pw-01", { protocol: "connect-h1" });
    const abort = new AbortController();
    const inbox = new Inbox<Msg>(
      client.watch({ machineId: "pw-01", tags: ["watch"] }, { signal: abort.signal }),
    );
    await inbox.next("initial", isDesired);
    const p = storePath("sys-pw-01", 2);
    await h.fleet("deploy").setDesiredGeneration({ machineId: "pw-01", storePath: p });
    await inbox.next("pushed", (m) => desiredHash(m) === p);
    assert.equal((await h.fleet("readonly").getMachine({ machineId: "pw-01" })).machine?.connected, true);
    abort.abort();
    await inbox.finished;
    await waitFor(
      "disconnect noticed",
      async () => !(await h.fleet("readonly").getMachine({ machineId: "pw-01" })).machine?.connected,
    );
  });

  it("an agent that stops reading does not hold up pushes to others, and costs a bounded outbox", async () => {
    // A raw HTTP/2 gRPC Session that sends Hello and then never reads its responses.
    const session = http2.connect(h.url, {
      ca: readFileSync(pki.ca),
      cert: readFileSync(pki.client("slow-01").cert),
      key: readFileSync(pki.client("slow-01").key),
    });
    const stream = session.request({
      ":method": "POST",
      ":path": "/nixfleet.v1.AgentService/Session",
      "content-type": "application/grpc",
      te: "trailers",
    });
    const body = toBinary(
      AgentMessageSchema,
      create(AgentMessageSchema, { message: { case: "hello", value: { machineId: "slow-01" } } }),
    );
    const frame = Buffer.alloc(5 + body.length);
    frame.writeUInt32BE(body.length, 1);
    Buffer.from(body).copy(frame, 5);
    stream.write(frame);
    stream.pause();
    try {
      await waitFor(
        "slow agent connected",
        async () => (await h.fleet("readonly").getMachine({ machineId: "slow-01" })).machine?.connected,
      );
      const fast = openSession("fast-01");
      await fast.inbox.next("initial", isDesired);
      for (let i = 0; i < 100; i++) {
        await h
          .fleet("deploy")
          .setDesiredGeneration({ machineId: "slow-01", storePath: storePath("sys-slow-01", i) });
      }
      const p = storePath("sys-fast-01", 1);
      await h.fleet("deploy").setDesiredGeneration({ machineId: "fast-01", storePath: p });
      await fast.inbox.next("the fast agent still gets its push", (m) => desiredHash(m) === p);
      fast.feed.end();
      await fast.inbox.finished;
    } finally {
      stream.destroy();
      session.destroy();
    }
    // The abandoned stream is cleaned up.
    await waitFor(
      "slow agent gone",
      async () => !(await h.fleet("readonly").getMachine({ machineId: "slow-01" })).machine?.connected,
    );
  });
  it("heartbeats flow both ways; a silent agent is disconnected after three of its intervals", async (t) => {
    // Its own control plane with a 1 s heartbeat, so other streams here are not timed out under load.
    const fast = await Harness.start(pki, { heartbeatIntervalSeconds: 1 });
    t.after(() => fast.close());
    const feed = new Feed<Partial<AgentMessage>>();
    feed.push(hello("ps-05", storePath("sys-ps-05", 1), ["push"]));
    const inbox = new Inbox<Msg>(fast.agent("ps-05").session(feed as AsyncIterable<never>));
    await inbox.next("server heartbeat", (m) => m.message.case === "heartbeat");
    // Keep talking for a while: the session stays open.
    for (let i = 0; i < 3; i++) {
      const n = inbox.messages.length;
      feed.push({
        message: { case: "heartbeat", value: { sentAt: timestampNow(), intervalSeconds: 2 } as never },
      });
      await inbox.next("another server heartbeat", (m) => m.message.case === "heartbeat", n);
    }
    assert.equal(inbox.done, false);
    // Then go silent: the server closes the stream.
    await waitFor("session closed for silence", () => inbox.done, 20_000);
    assert.equal(ConnectError.from(inbox.error).code, Code.DeadlineExceeded);
    assert.match(ConnectError.from(inbox.error).rawMessage, /no message from ps-05 for \d+ s/);
    feed.end();
  });
});
