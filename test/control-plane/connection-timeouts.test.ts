/**
 * Peers that connect and stall are disconnected by the real listeners: an idle TLS connection
 * (HTTP/2 or HTTP/1.1), partial HTTP/1.1 headers trickled byte by byte, a half-open HTTP/2
 * stream, a TCP connection that never starts its handshake. Short timeouts keep the test quick;
 * every wait is for the close itself, with a generous deadline, never a measured duration. An
 * agent Session that heartbeats stays open throughout.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import tls from "node:tls";
import type { AgentMessage } from "../../src/gen/nixfleet/v1/agent_pb.js";
import { RolloutStatus, RolloutStrategy } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness } from "./harness.js";
import { Feed, Inbox, storePath, waitFor } from "./helpers.js";

const TIMEOUTS = { idleMs: 2500, headerMs: 1000, handshakeMs: 1000 };
const DEADLINE_MS = 30_000;

function closed(emitter: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve) => emitter.once("close", () => resolve()));
}

async function within<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still open after ${DEADLINE_MS} ms`)), DEADLINE_MS);
  });
  try {
    return await Promise.race([p, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

describe("connection timeouts", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  before(async () => {
    pki = createPki(join(dir, "pki"));
    h = await Harness.start(pki, { connectionTimeouts: TIMEOUTS, heartbeatIntervalSeconds: 1 });
  });
  after(async () => {
    await h.close();
    removeTempDir(dir);
  });

  const port = () => Number(new URL(h.url).port);
  const tlsConnect = (alpn: string) =>
    new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({
        host: "127.0.0.1",
        port: port(),
        ca: readFileSync(pki.ca),
        ALPNProtocols: [alpn],
      });
      s.once("secureConnect", () => resolve(s));
      s.once("error", reject);
    });

  it("closes idle connections and stalled requests, but not a heartbeating agent Session", async () => {
    // An agent Session, heartbeating both ways. It beats every 0.5 s but announces 10 s, so a
    // loaded machine stalling this process for a few seconds does not make the control plane
    // close it as silent (three of its announced intervals) — that is not what is tested here.
    const feed = new Feed<Partial<AgentMessage>>();
    feed.push({
      message: {
        case: "hello",
        value: { machineId: "live-01", currentGeneration: storePath("sys-live-01", 1), tags: [] } as never,
      },
    });
    const inbox = new Inbox(h.agent("live-01").session(feed as AsyncIterable<never>));
    const beat = setInterval(
      () => feed.push({ message: { case: "heartbeat", value: { intervalSeconds: 10 } as never } }),
      500,
    );
    try {
      await waitFor(
        "the Session is up",
        async () => (await h.fleet("readonly").getMachine({ machineId: "live-01" })).machine?.connected,
      );
      // An operator watching a rollout that has nothing to say for a while.
      const { release } = await h.fleet("deploy").createRelease({
        entries: [{ hostname: "live-01", storePath: storePath("sys-live-01", 2) }],
        cacheUrl: "https://cache.example.org",
      });
      const { rollout } = await h.fleet("deploy").createRollout({
        releaseId: release!.id,
        target: { hosts: ["live-01"] },
        strategy: RolloutStrategy.ALL_AT_ONCE,
        healthTimeoutSeconds: 3600,
      });
      const watch = new Inbox(h.fleet("readonly").watchRollout({ rolloutId: rollout!.id }));
      await watch.next("the initial snapshot", () => true);

      // An HTTP/2 connection that never sends a request: GOAWAY, then closed.
      const cert = pki.client("idle-01");
      const idleH2 = http2.connect(h.url, {
        ca: readFileSync(pki.ca),
        cert: readFileSync(cert.cert),
        key: readFileSync(cert.key),
      });
      idleH2.on("error", () => {});
      const idleH2Closed = closed(idleH2);

      // A half-open HTTP/2 stream: a unary call whose request never ends.
      const open = http2.connect(h.url, { ca: readFileSync(pki.ca) });
      open.on("error", () => {});
      const stream = open.request({
        ":method": "POST",
        ":path": "/nixfleet.v1.AgentService/Report",
        "content-type": "application/grpc",
      });
      stream.on("error", () => {});
      stream.write(Buffer.from([0, 0, 0, 0, 10])); // an envelope promising 10 bytes, then nothing
      const streamClosed = closed(stream);

      // An HTTP/1.1 TLS connection that sends nothing, and one trickling a request head.
      const idleH1 = await tlsConnect("http/1.1");
      idleH1.on("error", () => {});
      const idleH1Closed = closed(idleH1);
      const slow = await tlsConnect("http/1.1");
      slow.on("error", () => {});
      const slowClosed = closed(slow);
      slow.write("GET /healthz HTTP/1.1\r\nHost: cp\r\n");
      const trickle = setInterval(() => slow.writable && slow.write("X-Slow: a\r\n"), 200);

      // A TCP connection that never starts the TLS handshake.
      const raw = net.connect(port(), "127.0.0.1");
      raw.on("error", () => {});
      const rawClosed = closed(raw);

      try {
        await within("the TCP connection without a handshake", rawClosed);
        await within("the trickled HTTP/1.1 request head", slowClosed);
        await within("the idle HTTP/1.1 connection", idleH1Closed);
        await within("the half-open HTTP/2 stream", streamClosed);
        assert.equal(stream.rstCode, http2.constants.NGHTTP2_CANCEL, "the stream is reset, not answered");
        await within("the idle HTTP/2 connection", idleH2Closed);
      } finally {
        clearInterval(trickle);
        slow.destroy();
        open.destroy();
      }

      // The Session outlived all of it: the idle timeout has passed, but it was never idle.
      assert.equal(inbox.done, false, "the Session is still open");
      assert.equal((await h.fleet("readonly").getMachine({ machineId: "live-01" })).machine?.connected, true);
      // The silent watch was told to go away with its connection, but keeps streaming.
      const n = watch.messages.length;
      await h.fleet("deploy").pauseRollout({ rolloutId: rollout!.id, reason: "checking the watch" });
      await watch.next("the pause, on the same watch", (m) => m.rollout?.status === RolloutStatus.PAUSED, n);
      assert.equal(watch.done, false);
    } finally {
      clearInterval(beat);
      feed.end();
      await inbox.finished.catch(() => {});
    }
  });
});

describe("connection timeouts on the insecure (plain HTTP) listener", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  before(async () => {
    pki = createPki(join(dir, "pki"));
    h = await Harness.start(pki, { connectionTimeouts: TIMEOUTS, allowInsecure: true });
  });
  after(async () => {
    await h.close();
    removeTempDir(dir);
  });

  it("closes a connection that never says which protocol, and a partial HTTP/1.1 head", async () => {
    const port = Number(new URL(h.url).port);
    // Both close after about the same time (the handshake and header timeouts are equal), in
    // either order: each close is listened for from the start, or the one that came first is
    // missed while the test still waits for the other (the cause of this test's failures in full
    // CI runs, which had been blamed on a larger listen backlog).
    const silent = net.connect(port, "127.0.0.1");
    silent.on("error", () => {});
    const silentClosed = closed(silent);
    const partial = net.connect(port, "127.0.0.1");
    partial.on("error", () => {});
    const partialClosed = closed(partial);
    partial.write("GET /healthz HTTP/1.1\r\nHost: cp\r\n");
    await within("the silent connection", silentClosed);
    await within("the partial request head", partialClosed);
  });
});
