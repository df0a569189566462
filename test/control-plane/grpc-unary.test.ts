/**
 * The raw gRPC path of the agent's unary RPCs (src/control-plane/http/grpc-unary.ts) against a
 * real server, with a raw HTTP/2 client writing exact bytes: the answer's framing, storage and
 * metrics, identity, every framing and decoding error, compression, grpc-timeout, availability,
 * and which requests the route takes (the other protocols stay with Connect).
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import { create, type DescMessage, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { claimsUnary } from "../../src/control-plane/http/grpc-unary.js";
import {
  GetDesiredGenerationRequestSchema,
  GetDesiredGenerationResponseSchema,
  ReportHealthRequestSchema,
  ReportRequestSchema,
} from "../../src/gen/nixfleet/v1/agent_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness } from "./harness.js";
import { storePath } from "./helpers.js";

const SERVICE = "/nixfleet.v1.AgentService";
const REPORT = `${SERVICE}/Report`;
const HEALTH = `${SERVICE}/ReportHealth`;
const DESIRED = `${SERVICE}/GetDesiredGeneration`;

function envelope(body: Uint8Array, flags = 0): Buffer {
  const f = Buffer.alloc(5 + body.length);
  f[0] = flags;
  f.writeUInt32BE(body.length, 1);
  f.set(body, 5);
  return f;
}

function encode<D extends DescMessage>(schema: D, init: MessageInitShape<D>): Buffer {
  return Buffer.from(toBinary(schema, create(schema, init)));
}

interface Answer {
  headers: http2.IncomingHttpHeaders;
  trailers: http2.IncomingHttpHeaders;
  body: Buffer;
  /** The gRPC status and message (trailers, or the headers of a trailers-only answer). */
  status: [number, string];
}

describe("raw gRPC path of the agent's unary RPCs", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  const sessions = new Map<string, http2.ClientHttp2Session>();

  function session(machine: string | null, url = h.url): http2.ClientHttp2Session {
    const key = `${machine}@${url}`;
    let s = sessions.get(key);
    if (!s) {
      const cert = machine ? pki.client(machine) : null;
      s = http2.connect(url, {
        ca: readFileSync(pki.ca),
        ...(cert ? { cert: readFileSync(cert.cert), key: readFileSync(cert.key) } : {}),
      });
      s.on("error", () => {});
      sessions.set(key, s);
    }
    return s;
  }

  /** One call: `body` is written as the given chunks (each its own DATA frame), then END_STREAM. */
  function call(
    machine: string | null,
    path: string,
    body: Buffer | Buffer[],
    extra: Record<string, string> = {},
    url = h.url,
  ): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const stream = session(machine, url).request({
        ":method": "POST",
        ":path": path,
        "content-type": "application/grpc",
        te: "trailers",
        ...extra,
      });
      let headers: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      stream.on("response", (hd) => (headers = hd));
      stream.on("trailers", (t) => (trailers = t));
      stream.on("data", (d: Buffer) => chunks.push(d));
      stream.on("error", reject);
      stream.on("close", () => {
        const t = trailers["grpc-status"] !== undefined ? trailers : headers;
        resolve({
          headers,
          trailers,
          body: Buffer.concat(chunks),
          status: [Number(t["grpc-status"]), decodeURIComponent(String(t["grpc-message"] ?? ""))],
        });
      });
      const parts = Array.isArray(body) ? body : [body];
      void (async () => {
        for (const p of parts) {
          stream.write(p);
          await new Promise((r) => setImmediate(r));
        }
        stream.end();
      })();
    });
  }

  const report = (machineId: string, init: { currentGeneration?: string } = {}) =>
    encode(ReportRequestSchema, {
      machineId,
      currentGeneration: storePath(`sys-${machineId}`, 1),
      success: true,
      outcome: Outcome.UP_TO_DATE,
      ...init,
    });

  async function stored(machineId: string): Promise<string | null> {
    try {
      const { machine } = await h.fleet("readonly").getMachine({ machineId });
      return machine?.currentGeneration ?? null;
    } catch {
      return null;
    }
  }

  before(async () => {
    pki = createPki(join(dir, "pki"));
    h = await Harness.start(pki, { maxMessageBytes: 64 * 1024 });
  });
  after(async () => {
    for (const s of sessions.values()) s.destroy();
    await h.close();
    removeTempDir(dir);
  });

  it("takes the binary gRPC protocol of Report, ReportHealth and GetDesiredGeneration only", () => {
    const req = (path: string, type: string, method = "POST") => ({
      ":method": method,
      ":path": path,
      "content-type": type,
    });
    for (const path of [REPORT, HEALTH, DESIRED]) {
      assert.equal(claimsUnary(req(path, "application/grpc")), true, path);
      assert.equal(claimsUnary(req(path, "application/grpc+proto")), true, path);
      for (const other of [
        "application/grpc+json",
        "application/grpc-web+proto",
        "application/proto",
        "application/json",
      ])
        assert.equal(claimsUnary(req(path, other)), false, `${path} ${other}`);
      assert.equal(claimsUnary(req(path, "application/grpc", "GET")), false);
    }
    assert.equal(claimsUnary(req(`${SERVICE}/Session`, "application/grpc")), false);
    assert.equal(claimsUnary(req("/nixfleet.v1.FleetService/GetFleetStatus", "application/grpc")), false);
  });

  it("Report: one empty message, the status in trailers; stored before the answer; counted in the metrics", async () => {
    const a = await call("un-01", REPORT, envelope(report("un-01")));
    assert.deepEqual(a.status, [0, ""]);
    assert.equal(a.headers[":status"], 200);
    assert.equal(a.headers["content-type"], "application/grpc+proto");
    assert.equal(a.trailers["grpc-status"], "0");
    assert.deepEqual([...a.body], [0, 0, 0, 0, 0]);
    assert.equal(await stored("un-01"), storePath("sys-un-01", 1));
    assert.match(
      await h.cp.metrics.render(),
      /nixfleet_rpc_requests_total\{procedure="\/nixfleet\.v1\.AgentService\/Report",code="ok"\} [1-9]/,
    );
  });

  it("a request split byte by byte across DATA frames, and ReportHealth and GetDesiredGeneration", async () => {
    const bytes = envelope(report("un-02"));
    const split = await call(
      "un-02",
      REPORT,
      [...bytes].map((b) => Buffer.from([b])),
    );
    assert.deepEqual(split.status, [0, ""]);

    const health = await call(
      "un-02",
      HEALTH,
      envelope(
        encode(ReportHealthRequestSchema, {
          machineId: "un-02",
          currentGeneration: storePath("sys-un-02", 1),
          allPassed: true,
        }),
      ),
    );
    assert.deepEqual(health.status, [0, ""]);

    const p = storePath("sys-un-02", 2);
    await h.fleet("deploy").setDesiredGeneration({ machineId: "un-02", storePath: p });
    const desired = await call(
      "un-02",
      DESIRED,
      envelope(encode(GetDesiredGenerationRequestSchema, { machineId: "un-02" })),
    );
    assert.deepEqual(desired.status, [0, ""]);
    assert.equal(desired.body.readUInt32BE(1), desired.body.length - 5);
    const answer = fromBinary(GetDesiredGenerationResponseSchema, desired.body.subarray(5));
    assert.equal(answer.generation?.hash, p);
  });

  it("identity: another machine's Report is PERMISSION_DENIED and not stored; an API key instead of a certificate is UNAUTHENTICATED", async () => {
    const other = await call("un-03", REPORT, envelope(report("un-04")));
    assert.equal(other.status[0], Code.PermissionDenied);
    assert.match(other.status[1], /certificate is for machine un-03, not un-04/);
    assert.equal(await stored("un-04"), null);

    const anon = await call(null, REPORT, envelope(report("un-04")), {
      authorization: `Bearer ${h.keys.admin}`,
    });
    assert.equal(anon.status[0], Code.Unauthenticated);
    assert.match(anon.status[1], /no client certificate was presented/);
    assert.equal(await stored("un-04"), null);
    assert.match(
      await h.cp.metrics.render(),
      /nixfleet_rpc_requests_total\{procedure="\/nixfleet\.v1\.AgentService\/Report",code="permission_denied"\} [1-9]/,
    );
  });

  it("framing: no message or two are UNIMPLEMENTED, a cut-off one and a bad flag INVALID_ARGUMENT, a long one RESOURCE_EXHAUSTED", async () => {
    assert.deepEqual((await call("un-05", REPORT, Buffer.alloc(0))).status, [
      Code.Unimplemented,
      "protocol error: missing input message for unary method",
    ]);
    const one = envelope(report("un-05"));
    assert.deepEqual((await call("un-05", REPORT, Buffer.concat([one, one]))).status, [
      Code.Unimplemented,
      "protocol error: received extra input message for unary method",
    ]);
    assert.deepEqual((await call("un-05", REPORT, one.subarray(0, one.length - 1))).status, [
      Code.InvalidArgument,
      "protocol error: incomplete envelope",
    ]);
    assert.deepEqual((await call("un-05", REPORT, envelope(report("un-05"), 0x02))).status, [
      Code.InvalidArgument,
      "request: message flag byte 0x02 is not a gRPC message flag (0 or 1)",
    ]);
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(64 * 1024 + 1, 1);
    assert.deepEqual((await call("un-05", REPORT, prefix)).status, [
      Code.ResourceExhausted,
      "request: a message of 65537 bytes is larger than the limit of 65536 bytes",
    ]);
    assert.equal(await stored("un-05"), null);
  });

  it("bad input is INVALID_ARGUMENT naming the type or the field, never INTERNAL", async () => {
    assert.deepEqual((await call("un-06", REPORT, envelope(Buffer.from([0x0a, 0x05, 0x61, 0x62])))).status, [
      Code.InvalidArgument,
      "request: not a valid binary nixfleet.v1.ReportRequest: premature EOF",
    ]);
    const badTime = await call(
      "un-06",
      HEALTH,
      envelope(
        encode(ReportHealthRequestSchema, {
          machineId: "un-06",
          currentGeneration: storePath("sys-un-06", 1),
          timestamp: { seconds: 2n ** 62n, nanos: 0 },
        }),
      ),
    );
    assert.equal(badTime.status[0], Code.InvalidArgument);
    assert.match(badTime.status[1], /^timestamp: seconds 4611686018427387904 is outside/);
    const badPath = await call("un-06", REPORT, envelope(report("un-06", { currentGeneration: "/tmp/x" })));
    assert.equal(badPath.status[0], Code.InvalidArgument);
    assert.match(badPath.status[1], /^current_generation: /);
    assert.equal(await stored("un-06"), null);
  });

  it("compression: gzip works; flagged without grpc-encoding or not gzip is INVALID_ARGUMENT; an unknown name is UNIMPLEMENTED", async () => {
    const gzip = await call("un-07", REPORT, envelope(gzipSync(report("un-07")), 1), {
      "grpc-encoding": "gzip",
    });
    assert.deepEqual(gzip.status, [0, ""]);
    assert.equal(await stored("un-07"), storePath("sys-un-07", 1));

    assert.deepEqual((await call("un-07", REPORT, envelope(report("un-07"), 1))).status, [
      Code.InvalidArgument,
      "grpc-encoding: a message is flagged as compressed, but the request names no compression",
    ]);
    const notGzip = await call("un-07", REPORT, envelope(report("un-07"), 1), { "grpc-encoding": "gzip" });
    assert.equal(notGzip.status[0], Code.InvalidArgument);
    const zstd = await call("un-07", REPORT, envelope(report("un-07"), 1), { "grpc-encoding": "zstd" });
    assert.equal(zstd.status[0], Code.Unimplemented);
    assert.match(zstd.status[1], /unknown compression "zstd": supported encodings are gzip,br/);
  });

  it("grpc-timeout: a generous one is fine, a malformed one is INVALID_ARGUMENT", async () => {
    const ok = await call("un-08", REPORT, envelope(report("un-08")), { "grpc-timeout": "600S" });
    assert.deepEqual(ok.status, [0, ""]);
    const bad = await call("un-08", REPORT, envelope(report("un-08")), { "grpc-timeout": "soon" });
    assert.equal(bad.status[0], Code.InvalidArgument);
    assert.match(bad.status[1], /invalid grpc timeout value: soon/);
  });

  it("before the database is ready: UNAVAILABLE", async () => {
    const starting = await Harness.start(pki, { listenOnly: true });
    try {
      const a = await call("un-09", REPORT, envelope(report("un-09")), {}, starting.url);
      assert.equal(a.status[0], Code.Unavailable);
      assert.match(a.status[1], /starting/);
    } finally {
      sessions.get(`un-09@${starting.url}`)?.destroy();
      await starting.close();
    }
  });
});
