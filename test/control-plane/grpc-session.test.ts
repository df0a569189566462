/**
 * The raw gRPC Session path (src/control-plane/http/grpc-session.ts) against a real server, with
 * a raw HTTP/2 client writing exact bytes: framing split across DATA frames, compression, size,
 * flag and decode errors, Hello rules and identity, grpc-timeout, client cancel, shutdown, and
 * that Session calls are still counted in the RPC metrics.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import {
  AgentMessageSchema,
  type ControlMessage,
  ControlMessageSchema,
} from "../../src/gen/nixfleet/v1/agent_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness } from "./harness.js";
import { storePath, waitFor } from "./helpers.js";

const SESSION = "/nixfleet.v1.AgentService/Session";

function envelope(body: Uint8Array, flags = 0): Buffer {
  const f = Buffer.alloc(5 + body.length);
  f[0] = flags;
  f.writeUInt32BE(body.length, 1);
  f.set(body, 5);
  return f;
}

function agentMessage(init: MessageInitShape<typeof AgentMessageSchema>): Buffer {
  return Buffer.from(toBinary(AgentMessageSchema, create(AgentMessageSchema, init)));
}

const hello = (machineId: string) => agentMessage({ message: { case: "hello", value: { machineId } } });

/** One raw Session: what came back, and when it ended. */
class RawSession {
  readonly messages: ControlMessage[] = [];
  headers: http2.IncomingHttpHeaders = {};
  trailers: http2.IncomingHttpHeaders = {};
  readonly ended: Promise<void>;
  private buf = Buffer.alloc(0);

  constructor(
    readonly stream: http2.ClientHttp2Stream,
    private readonly onMessage: () => void = () => {},
  ) {
    stream.on("response", (h) => (this.headers = h));
    stream.on("trailers", (t) => (this.trailers = t));
    stream.on("data", (chunk: Buffer) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      while (this.buf.length >= 5 && this.buf.length >= 5 + this.buf.readUInt32BE(1)) {
        const n = this.buf.readUInt32BE(1);
        this.messages.push(fromBinary(ControlMessageSchema, this.buf.subarray(5, 5 + n)));
        this.buf = this.buf.subarray(5 + n);
        this.onMessage();
      }
    });
    this.ended = new Promise((resolve) => {
      stream.on("close", () => resolve());
      stream.on("error", () => {});
    });
  }

  /** The gRPC status and message (trailers, or headers of a trailers-only answer). */
  status(): [number, string] {
    const t = this.trailers["grpc-status"] !== undefined ? this.trailers : this.headers;
    return [Number(t["grpc-status"]), decodeURIComponent(String(t["grpc-message"] ?? ""))];
  }

  async finished(): Promise<[number, string]> {
    await this.ended;
    return this.status();
  }
}

describe("raw gRPC Session path", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  const clients: http2.ClientHttp2Session[] = [];

  function connect(machine: string | null, url = h.url): http2.ClientHttp2Session {
    const cert = machine ? pki.client(machine) : null;
    const session = http2.connect(url, {
      ca: readFileSync(pki.ca),
      ...(cert ? { cert: readFileSync(cert.cert), key: readFileSync(cert.key) } : {}),
    });
    session.on("error", () => {});
    clients.push(session);
    return session;
  }

  function open(machine: string | null, extra: Record<string, string> = {}, url = h.url): RawSession {
    const stream = connect(machine, url).request({
      ":method": "POST",
      ":path": SESSION,
      "content-type": "application/grpc",
      te: "trailers",
      ...extra,
    });
    return new RawSession(stream);
  }

  before(async () => {
    pki = createPki(join(dir, "pki"));
    h = await Harness.start(pki, { maxMessageBytes: 64 * 1024 });
  });
  after(async () => {
    for (const c of clients) c.destroy();
    await h.close();
    removeTempDir(dir);
  });

  it("a Hello split across DATA frames, byte by byte, opens the Session; the answer is gRPC", async () => {
    const s = open("raw-01");
    const bytes = envelope(hello("raw-01"));
    for (const b of bytes) {
      s.stream.write(Buffer.from([b]));
      await new Promise((r) => setImmediate(r));
    }
    await waitFor("initial message", () => s.messages.length > 0);
    assert.equal(s.messages[0]!.message.case, "desiredGenerationChanged");
    assert.equal(s.headers[":status"], 200);
    assert.equal(s.headers["content-type"], "application/grpc+proto");
    assert.equal(h.cp.hub.isConnected("raw-01"), true);
    s.stream.end();
    assert.deepEqual(await s.finished(), [0, ""]);
  });

  it("two messages in one DATA frame: Hello then a heartbeat announcing the agent's interval", async () => {
    const s = open("raw-02");
    s.stream.write(
      Buffer.concat([
        envelope(hello("raw-02")),
        envelope(agentMessage({ message: { case: "heartbeat", value: { intervalSeconds: 7 } } })),
      ]),
    );
    await waitFor("initial message", () => s.messages.length > 0);
    s.stream.end();
    assert.deepEqual(await s.finished(), [0, ""]);
  });

  it("pushes arrive on the raw stream", async () => {
    const s = open("raw-03");
    s.stream.write(envelope(hello("raw-03")));
    await waitFor("initial message", () => s.messages.length > 0);
    const p = storePath("sys-raw-03", 1);
    await h.fleet("deploy").setDesiredGeneration({ machineId: "raw-03", storePath: p });
    await waitFor("push", () =>
      s.messages.some(
        (m) => m.message.case === "desiredGenerationChanged" && m.message.value.generation?.hash === p,
      ),
    );
    s.stream.end();
    await s.finished();
  });

  it("a message flag other than 0 or 1 is INVALID_ARGUMENT naming the flag", async () => {
    const s = open("raw-04");
    s.stream.end(envelope(hello("raw-04"), 0x02));
    assert.deepEqual(await s.finished(), [
      Code.InvalidArgument,
      "request: message flag byte 0x02 is not a gRPC message flag (0 or 1)",
    ]);
  });

  it("a message longer than the limit is RESOURCE_EXHAUSTED, refused from its length prefix", async () => {
    const s = open("raw-05");
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(64 * 1024 + 1, 1);
    s.stream.write(prefix); // the body never comes: the prefix alone is refused
    assert.deepEqual(await s.finished(), [
      Code.ResourceExhausted,
      "request: a message of 65537 bytes is larger than the limit of 65536 bytes",
    ]);
  });

  it("a truncated message is INVALID_ARGUMENT naming the type and the problem", async () => {
    const s = open("raw-06");
    s.stream.end(envelope(Buffer.from([0x0a, 0x05, 0x61, 0x62])));
    assert.deepEqual(await s.finished(), [
      Code.InvalidArgument,
      "request: not a valid binary nixfleet.v1.AgentMessage: premature EOF",
    ]);
  });

  it("compression: flagged without grpc-encoding is INVALID_ARGUMENT; gzip works; an unknown name is UNIMPLEMENTED", async () => {
    const flagged = open("raw-07");
    flagged.stream.end(envelope(hello("raw-07"), 1));
    assert.deepEqual(await flagged.finished(), [
      Code.InvalidArgument,
      "grpc-encoding: a message is flagged as compressed, but the request names no compression",
    ]);

    const gzip = open("raw-07", { "grpc-encoding": "gzip" });
    gzip.stream.write(envelope(gzipSync(hello("raw-07")), 1));
    await waitFor("initial message after a gzip Hello", () => gzip.messages.length > 0);
    gzip.stream.end();
    assert.deepEqual(await gzip.finished(), [0, ""]);

    const notGzip = open("raw-07", { "grpc-encoding": "gzip" });
    notGzip.stream.end(envelope(hello("raw-07"), 1));
    assert.equal((await notGzip.finished())[0], Code.InvalidArgument);

    const zstd = open("raw-07", { "grpc-encoding": "zstd" });
    zstd.stream.end(envelope(hello("raw-07"), 1));
    const [code, message] = await zstd.finished();
    assert.equal(code, Code.Unimplemented);
    assert.match(message, /unknown compression "zstd": supported encodings are gzip,br/);
  });

  it("the first message must be Hello; Hello only once", async () => {
    const first = open("raw-08");
    first.stream.end(envelope(agentMessage({ message: { case: "heartbeat", value: {} } })));
    assert.deepEqual(await first.finished(), [
      Code.InvalidArgument,
      "the first Session message must be Hello",
    ]);

    const twice = open("raw-08");
    twice.stream.write(envelope(hello("raw-08")));
    await waitFor("initial message", () => twice.messages.length > 0);
    twice.stream.write(envelope(hello("raw-08")));
    assert.deepEqual(await twice.finished(), [
      Code.InvalidArgument,
      "Hello may only be sent once, as the first Session message",
    ]);
  });

  it("identity: another machine's Hello is PERMISSION_DENIED; no certificate is UNAUTHENTICATED before any message", async () => {
    const other = open("raw-09");
    other.stream.end(envelope(hello("raw-10")));
    const [code, message] = await other.finished();
    assert.equal(code, Code.PermissionDenied);
    assert.match(message, /certificate is for machine raw-09, not raw-10/);
    assert.equal(h.cp.hub.isConnected("raw-10"), false);
    // The error details travel as Connect sends them.
    assert.ok(other.trailers["grpc-status-details-bin"] ?? other.headers["grpc-status-details-bin"]);

    const anon = open(null);
    const [anonCode, anonMessage] = await anon.finished();
    assert.equal(anonCode, Code.Unauthenticated);
    assert.match(anonMessage, /no client certificate was presented/);
  });

  it("grpc-timeout ends the Session with DEADLINE_EXCEEDED; a malformed one is INVALID_ARGUMENT", async () => {
    const s = open("raw-11", { "grpc-timeout": "300m" });
    s.stream.write(envelope(hello("raw-11")));
    const [code] = await s.finished();
    assert.equal(code, Code.DeadlineExceeded);
    assert.equal(h.cp.hub.isConnected("raw-11"), false);

    const bad = open("raw-11", { "grpc-timeout": "soon" });
    const [badCode, badMessage] = await bad.finished();
    assert.equal(badCode, Code.InvalidArgument);
    assert.match(badMessage, /invalid grpc timeout value: soon/);
  });

  it("a client that cancels (RST_STREAM) is detached and counted as canceled", async () => {
    const s = open("raw-12");
    s.stream.write(envelope(hello("raw-12")));
    await waitFor("initial message", () => s.messages.length > 0);
    assert.equal(h.cp.hub.isConnected("raw-12"), true);
    // destroy() resets without END_STREAM (close() would half-close first, a normal end).
    s.stream.destroy();
    await waitFor("detached", () => !h.cp.hub.isConnected("raw-12"));
    const metrics = await h.cp.metrics.render();
    assert.match(
      metrics,
      /nixfleet_rpc_requests_total\{procedure="\/nixfleet\.v1\.AgentService\/Session",code="canceled"\} [1-9]/,
    );
    assert.match(
      metrics,
      /nixfleet_rpc_requests_total\{procedure="\/nixfleet\.v1\.AgentService\/Session",code="invalid_argument"\} [1-9]/,
    );
  });

  it("a reader that falls behind gets the newest assignment once it reads again, every time", async () => {
    const s = open("raw-14");
    s.stream.write(envelope(hello("raw-14")));
    await waitFor("initial message", () => s.messages.length > 0);
    const newest = (path: string) => () =>
      s.messages.some(
        (m) => m.message.case === "desiredGenerationChanged" && m.message.value.generation?.hash === path,
      );
    // Twice: the stream's flow-control window and write buffer fill up (≈ 90 KB of pushes while
    // the client does not read), the rest waits in the coalescing outbox until the stream drains.
    for (let round = 0; round < 2; round++) {
      s.stream.pause();
      let last = "";
      for (let i = 0; i < 800; i++) {
        last = storePath(`sys-raw-14-${round}`, i);
        h.cp.hub.pushDesired(
          {
            machineId: "raw-14",
            desired: {
              storePath: last,
              cacheUrl: "https://cache.example.org",
              revision: 1_000_000 + round * 1000 + i,
              rolloutId: "",
              setBy: "test",
              setAt: Date.now(),
            },
          },
          undefined,
        );
      }
      s.stream.resume();
      await waitFor(`round ${round}: the newest push after draining`, newest(last));
    }
    assert.equal(h.cp.hub.isConnected("raw-14"), true);
    s.stream.end();
    await s.finished();
  });

  it("a newer Session replaces the older one, which ends ABORTED", async () => {
    const one = open("raw-13");
    one.stream.write(envelope(hello("raw-13")));
    await waitFor("initial 1", () => one.messages.length > 0);
    const two = open("raw-13");
    two.stream.write(envelope(hello("raw-13")));
    const [code, message] = await one.finished();
    assert.equal(code, Code.Aborted);
    assert.match(message, /replaced by a newer session stream for raw-13/);
    await waitFor("initial 2", () => two.messages.length > 0);
    assert.equal(h.cp.hub.isConnected("raw-13"), true);
    two.stream.end();
    await two.finished();
  });
});

describe("raw gRPC Session path: phases", () => {
  const dir = makeTempDir();
  let pki: Pki;
  before(() => {
    pki = createPki(join(dir, "pki"));
  });
  after(() => removeTempDir(dir));

  function rawOpen(h: Harness, machine: string): { s: RawSession; client: http2.ClientHttp2Session } {
    const cert = pki.client(machine);
    const client = http2.connect(h.url, {
      ca: readFileSync(pki.ca),
      cert: readFileSync(cert.cert),
      key: readFileSync(cert.key),
    });
    client.on("error", () => {});
    const stream = client.request({
      ":method": "POST",
      ":path": SESSION,
      "content-type": "application/grpc+proto",
    });
    return { s: new RawSession(stream), client };
  }

  it("UNAVAILABLE while starting", async () => {
    const h = await Harness.start(pki, { listenOnly: true });
    const { s, client } = rawOpen(h, "ph-01");
    try {
      s.stream.write(envelope(hello("ph-01")));
      const [code, message] = await s.finished();
      assert.equal(code, Code.Unavailable);
      assert.match(message, /starting/);
    } finally {
      client.destroy();
      await h.close();
    }
  });

  it("shutdown ends open Sessions with UNAVAILABLE", async () => {
    const h = await Harness.start(pki);
    const { s, client } = rawOpen(h, "ph-02");
    try {
      s.stream.write(envelope(hello("ph-02")));
      await waitFor("initial message", () => s.messages.length > 0);
      const closing = h.close();
      const [code, message] = await s.finished();
      assert.equal(code, Code.Unavailable);
      assert.match(message, /shutting down/);
      await closing;
    } finally {
      client.destroy();
    }
  });

  it("no Hello within the timeout: DEADLINE_EXCEEDED", async () => {
    const h = await Harness.start(pki, { heartbeatIntervalSeconds: 1 });
    const { s, client } = rawOpen(h, "ph-03");
    try {
      const [code, message] = await s.finished();
      assert.equal(code, Code.DeadlineExceeded);
      assert.match(message, /no Hello within 10 s of opening the Session/);
    } finally {
      client.destroy();
      await h.close();
    }
  });
});
