/**
 * Bad input of every class the fuzzer found, sent as raw bytes to the real server: it is
 * INVALID_ARGUMENT (HTTP 400) naming what is wrong — never INTERNAL — on every protocol, and
 * nothing is stored.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import https from "node:https";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import { Code, ConnectError } from "@connectrpc/connect";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness } from "./harness.js";
import { storePath } from "./helpers.js";

const REPORT = "/nixfleet.v1.AgentService/Report";
const SESSION = "/nixfleet.v1.AgentService/Session";
/** Field 1 (machine_id) announces 5 bytes and carries 2. */
const TRUNCATED = Buffer.from([0x0a, 0x05, 0x61, 0x62]);

function envelope(body: Buffer, flags = 0): Buffer {
  const f = Buffer.alloc(5 + body.length);
  f[0] = flags;
  f.writeUInt32BE(body.length, 1);
  body.copy(f, 5);
  return f;
}

interface Answer {
  status: number;
  headers: http2.IncomingHttpHeaders;
  trailers: http2.IncomingHttpHeaders;
  body: Buffer;
}

describe("bad input is INVALID_ARGUMENT on every protocol, never INTERNAL", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  let session: http2.ClientHttp2Session;
  before(async () => {
    pki = createPki(join(dir, "pki"));
    h = await Harness.start(pki);
    const cert = pki.client("bad-01");
    session = http2.connect(h.url, {
      ca: readFileSync(pki.ca),
      cert: readFileSync(cert.cert),
      key: readFileSync(cert.key),
    });
  });
  after(async () => {
    session.close();
    await h.close();
    removeTempDir(dir);
  });

  function post(path: string, headers: Record<string, string>, body: Buffer): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const stream = session.request({ ":method": "POST", ":path": path, ...headers });
      const answer: Answer = { status: 0, headers: {}, trailers: {}, body: Buffer.alloc(0) };
      const chunks: Buffer[] = [];
      stream.on("response", (hd) => {
        answer.headers = hd;
        answer.status = Number(hd[":status"]);
      });
      stream.on("trailers", (t) => (answer.trailers = t));
      stream.on("data", (d: Buffer) => chunks.push(d));
      stream.on("error", reject);
      stream.on("end", () => resolve({ ...answer, body: Buffer.concat(chunks) }));
      stream.end(body);
    });
  }

  /** The gRPC status and message (trailers, or headers for a trailers-only answer). */
  function grpcStatus(a: Answer): [number, string] {
    const t = a.trailers["grpc-status"] !== undefined ? a.trailers : a.headers;
    return [Number(t["grpc-status"]), decodeURIComponent(String(t["grpc-message"] ?? ""))];
  }

  async function notStored(machineId: string) {
    await assert.rejects(h.fleet("readonly").getMachine({ machineId }), (e: unknown) => {
      return ConnectError.from(e).code === Code.NotFound;
    });
  }

  describe("a truncated binary protobuf", () => {
    it("gRPC unary", async () => {
      const a = await post(REPORT, { "content-type": "application/grpc" }, envelope(TRUNCATED));
      assert.deepEqual(grpcStatus(a), [
        Code.InvalidArgument,
        "request: not a valid binary nixfleet.v1.ReportRequest: premature EOF",
      ]);
    });
    it("Connect unary (and FleetService too)", async () => {
      const a = await post(REPORT, { "content-type": "application/proto" }, TRUNCATED);
      assert.equal(a.status, 400);
      assert.deepEqual(JSON.parse(a.body.toString()), {
        code: "invalid_argument",
        message: "request: not a valid binary nixfleet.v1.ReportRequest: premature EOF",
      });
      const fleet = await post(
        "/nixfleet.v1.FleetService/GetMachine",
        { "content-type": "application/proto", authorization: `Bearer ${h.keys.readonly}` },
        TRUNCATED,
      );
      assert.equal(fleet.status, 400);
      assert.match(
        JSON.parse(fleet.body.toString()).message,
        /nixfleet\.v1\.GetMachineRequest: premature EOF/,
      );
    });
    it("Connect GET: a truncated message, and a message that is not base64", async () => {
      const get = (query: string) =>
        new Promise<Answer>((resolve, reject) => {
          const stream = session.request({
            ":method": "GET",
            ":path": `/nixfleet.v1.FleetService/GetMachine?${query}`,
            authorization: `Bearer ${h.keys.readonly}`,
          });
          const chunks: Buffer[] = [];
          let status = 0;
          stream.on("response", (hd) => (status = Number(hd[":status"])));
          stream.on("data", (d: Buffer) => chunks.push(d));
          stream.on("error", reject);
          stream.on("end", () => resolve({ status, headers: {}, trailers: {}, body: Buffer.concat(chunks) }));
          stream.end();
        });
      const truncated = await get(`encoding=proto&base64=1&message=${TRUNCATED.toString("base64url")}`);
      assert.equal(truncated.status, 400);
      assert.match(JSON.parse(truncated.body.toString()).message, /GetMachineRequest: premature EOF/);
      const notBase64 = await get("encoding=proto&base64=1&message=!!!!");
      assert.equal(notBase64.status, 400);
      assert.deepEqual(JSON.parse(notBase64.body.toString()).code, "invalid_argument");
      assert.match(JSON.parse(notBase64.body.toString()).message, /^message: not valid base64/);
    });
    it("gRPC-web unary", async () => {
      const a = await post(REPORT, { "content-type": "application/grpc-web+proto" }, envelope(TRUNCATED));
      assert.equal(a.body[0], 0x80, "a trailer frame");
      const trailer = a.body.subarray(5).toString();
      assert.match(trailer, /grpc-status: ?3\r\n/);
      assert.match(
        decodeURIComponent(trailer),
        /not a valid binary nixfleet\.v1\.ReportRequest: premature EOF/,
      );
    });
    it("a message on the Session stream", async () => {
      const a = await post(SESSION, { "content-type": "application/grpc" }, envelope(TRUNCATED));
      assert.deepEqual(grpcStatus(a), [
        Code.InvalidArgument,
        "request: not a valid binary nixfleet.v1.AgentMessage: premature EOF",
      ]);
    });
    it("invalid UTF-8 in a string field", async () => {
      // Field 4 (message) with the bytes of a lone surrogate, which is not UTF-8.
      const body = Buffer.from([0x22, 0x03, 0xed, 0xa0, 0x80]);
      const a = await post(REPORT, { "content-type": "application/grpc" }, envelope(body));
      const [code, message] = grpcStatus(a);
      assert.equal(code, Code.InvalidArgument);
      assert.match(message, /not a valid binary nixfleet\.v1\.ReportRequest: .*utf-8/);
      await notStored("bad-01");
    });
  });

  describe("compression", () => {
    it("a message flagged compressed without a grpc-encoding", async () => {
      const a = await post(REPORT, { "content-type": "application/grpc" }, envelope(TRUNCATED, 1));
      assert.deepEqual(grpcStatus(a), [
        Code.InvalidArgument,
        "grpc-encoding: a message is flagged as compressed, but the request names no compression",
      ]);
    });
    it("a gzip message that is not gzip, or decompresses to a truncated message", async () => {
      const garbage = await post(
        REPORT,
        { "content-type": "application/grpc", "grpc-encoding": "gzip" },
        envelope(TRUNCATED, 1),
      );
      assert.equal(grpcStatus(garbage)[0], Code.InvalidArgument);
      const truncated = await post(
        REPORT,
        { "content-type": "application/grpc", "grpc-encoding": "gzip" },
        envelope(gzipSync(TRUNCATED), 1),
      );
      assert.deepEqual(grpcStatus(truncated), [
        Code.InvalidArgument,
        "request: not a valid binary nixfleet.v1.ReportRequest: premature EOF",
      ]);
      const connect = await post(
        REPORT,
        { "content-type": "application/proto", "content-encoding": "gzip" },
        TRUNCATED,
      );
      assert.equal(connect.status, 400);
    });
    it("an unknown compression name is UNIMPLEMENTED with the supported list, as gRPC and Connect specify", async () => {
      const a = await post(
        REPORT,
        { "content-type": "application/grpc", "grpc-encoding": "zstd" },
        envelope(TRUNCATED, 1),
      );
      const [code, message] = grpcStatus(a);
      assert.equal(code, Code.Unimplemented);
      assert.match(message, /unknown compression "zstd": supported encodings are gzip,br/);
    });
  });

  describe("an out-of-range google.protobuf.Timestamp", () => {
    const g = storePath("nixos-system-bad-02");
    const agent = () => h.agent("bad-02");
    for (const [name, timestamp, message] of [
      [
        "seconds past year 9999",
        { seconds: 2n ** 62n, nanos: 0 },
        /^timestamp: seconds 4611686018427387904 is outside/,
      ],
      [
        "seconds before year 1",
        { seconds: -(2n ** 40n), nanos: 0 },
        /^timestamp: seconds -1099511627776 is outside/,
      ],
      ["nanos out of range", { seconds: 5n, nanos: 2_000_000_000 }, /^timestamp: nanos 2000000000 must be/],
    ] as const) {
      it(`${name}: Report and ReportHealth`, async () => {
        await assert.rejects(
          agent().report({ machineId: "bad-02", currentGeneration: g, timestamp }),
          (e: unknown) =>
            ConnectError.from(e).code === Code.InvalidArgument &&
            message.test(ConnectError.from(e).rawMessage),
        );
        await assert.rejects(
          agent().reportHealth({ machineId: "bad-02", currentGeneration: g, timestamp }),
          (e: unknown) =>
            ConnectError.from(e).code === Code.InvalidArgument &&
            message.test(ConnectError.from(e).rawMessage),
        );
        await notStored("bad-02");
      });
    }
    it("a fractional millisecond is stored as whole milliseconds", async () => {
      await agent().report({
        machineId: "bad-02",
        currentGeneration: g,
        timestamp: { seconds: 5n, nanos: 1 },
      });
      assert.equal(
        (await h.fleet("readonly").getMachine({ machineId: "bad-02" })).machine?.currentGeneration,
        g,
      );
    });
  });

  describe("a lone UTF-16 surrogate in JSON", () => {
    function rest(machineId: string, body: string) {
      const cert = pki.client(machineId);
      return new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = https.request(
          new URL(`/api/v1/machines/${machineId}/report`, h.url),
          {
            method: "POST",
            ca: readFileSync(pki.ca),
            cert: readFileSync(cert.cert),
            key: readFileSync(cert.key),
            headers: { "content-type": "application/json" },
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (c: Buffer) => chunks.push(c));
            res.on("end", () =>
              resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }),
            );
          },
        );
        req.on("error", reject);
        req.end(body);
      });
    }
    it("the v0.1 REST report route refuses it, naming the field, like the Connect routes", async () => {
      const top = await rest("bad-03", '{"success": true, "message": "ok \\ud800"}');
      assert.equal(top.status, 400);
      assert.match(top.body, /^message: is not valid Unicode text \(it contains a lone UTF-16 surrogate\)/);
      const nested = await rest(
        "bad-03",
        '{"health": {"all_passed": false, "results": [{"check_name": "x", "status": "fail", "message": "\\udfff"}]}}',
      );
      assert.equal(nested.status, 400);
      assert.match(nested.body, /^health\.results\[0\]\.message: is not valid Unicode/);
      // A well-formed pair (an emoji) is fine.
      const ok = await rest("bad-03", '{"success": true, "message": "ok \\ud83d\\ude00"}');
      assert.equal(ok.status, 200, ok.body);
      const { machine } = await h.fleet("readonly").getMachine({ machineId: "bad-03" });
      assert.equal(machine?.machineId, "bad-03", "registered by the valid report only");

      const connect = await post(
        REPORT,
        { "content-type": "application/json" },
        Buffer.from('{"machineId": "bad-01", "message": "\\ud800"}'),
      );
      assert.equal(connect.status, 400);
      assert.match(JSON.parse(connect.body.toString()).message, /ReportRequest\.message.*invalid UTF8/);
    });
  });
});
