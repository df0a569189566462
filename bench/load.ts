/**
 * Load generator (a child process of bench/run.ts, so it never shares the server's event loop):
 * keeps `concurrency` requests in flight on one HTTP/2 mTLS session for `seconds`, then prints
 * one JSON line {requests, errors, rps, p50Ms, p99Ms}.
 *
 * Every target is driven by the same raw node:http2 client with a request encoded once up front,
 * so the client's own cost is identical across targets and the ratios compare servers only:
 * gRPC (length-prefixed protobuf, grpc-status trailer), Connect binary and JSON POSTs, a Connect
 * GET (the RPC is side-effect free), the v0.1 REST route, and the baseline server.
 */
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { performance } from "node:perf_hooks";
import { create, toBinary, toJsonString } from "@bufbuild/protobuf";
import { GetDesiredGenerationRequestSchema } from "../src/gen/nixfleet/v1/agent_pb.js";

interface Args {
  url: string;
  target: "grpc" | "connect" | "connect-json" | "connect-get" | "rest" | "raw";
  machineId: string;
  ca: string;
  cert: string;
  key: string;
  concurrency: number;
  seconds: number;
}

interface Prepared {
  headers: http2.OutgoingHttpHeaders;
  body?: Buffer;
  /** gRPC reports failure in trailers, with HTTP 200. */
  grpc: boolean;
}

const args = JSON.parse(process.argv[2]!) as Args;
const PATH = "/nixfleet.v1.AgentService/GetDesiredGeneration";

function prepare(): Prepared {
  const message = create(GetDesiredGenerationRequestSchema, { machineId: args.machineId });
  switch (args.target) {
    case "grpc": {
      const payload = toBinary(GetDesiredGenerationRequestSchema, message);
      const frame = Buffer.alloc(5 + payload.length);
      frame.writeUInt32BE(payload.length, 1);
      frame.set(payload, 5);
      return {
        headers: {
          ":method": "POST",
          ":path": PATH,
          "content-type": "application/grpc+proto",
          te: "trailers",
        },
        body: frame,
        grpc: true,
      };
    }
    case "connect":
      return {
        headers: {
          ":method": "POST",
          ":path": PATH,
          "content-type": "application/proto",
          "connect-protocol-version": "1",
        },
        body: Buffer.from(toBinary(GetDesiredGenerationRequestSchema, message)),
        grpc: false,
      };
    case "connect-json":
      return {
        headers: {
          ":method": "POST",
          ":path": PATH,
          "content-type": "application/json",
          "connect-protocol-version": "1",
        },
        body: Buffer.from(toJsonString(GetDesiredGenerationRequestSchema, message)),
        grpc: false,
      };
    case "connect-get": {
      const query = `encoding=json&connect=v1&message=${encodeURIComponent(toJsonString(GetDesiredGenerationRequestSchema, message))}`;
      return { headers: { ":method": "GET", ":path": `${PATH}?${query}` }, grpc: false };
    }
    case "rest":
      return {
        headers: { ":method": "GET", ":path": `/api/v1/machines/${args.machineId}/desired-generation` },
        grpc: false,
      };
    case "raw":
      return { headers: { ":method": "GET", ":path": "/raw" }, grpc: false };
  }
}

const prepared = prepare();
const session = http2.connect(args.url, {
  ca: readFileSync(args.ca),
  cert: readFileSync(args.cert),
  key: readFileSync(args.key),
});
session.on("error", () => {});

function call(): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = session.request(prepared.headers);
    let status = 0;
    let grpcStatus: string | undefined;
    req.on("response", (headers) => {
      status = Number(headers[":status"]);
      grpcStatus = headers["grpc-status"] as string | undefined;
    });
    req.on("trailers", (trailers) => {
      grpcStatus = (trailers["grpc-status"] as string | undefined) ?? grpcStatus;
    });
    req.on("data", () => {});
    req.on("end", () => {
      if (status !== 200) return reject(new Error(`HTTP ${status}`));
      if (prepared.grpc && grpcStatus !== "0") return reject(new Error(`grpc-status ${grpcStatus}`));
      resolve();
    });
    req.on("error", reject);
    req.end(prepared.body);
  });
}

const latencies: number[] = [];
let errors = 0;
let lastError = "";
// Warm-up (connection, TLS, the server's JIT), not measured.
const warm = performance.now() + Math.min(1000, args.seconds * 200);
while (performance.now() < warm) await call();
const started = performance.now();
const end = started + args.seconds * 1000;
await Promise.all(
  Array.from({ length: args.concurrency }, async () => {
    while (performance.now() < end) {
      const t = performance.now();
      try {
        await call();
        latencies.push(performance.now() - t);
      } catch (err) {
        errors++;
        lastError = (err as Error).message;
      }
    }
  }),
);
const elapsed = (performance.now() - started) / 1000;
latencies.sort((a, b) => a - b);
const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] ?? 0;
process.stdout.write(
  `${JSON.stringify({ requests: latencies.length, errors, lastError, rps: latencies.length / elapsed, p50Ms: pct(0.5), p99Ms: pct(0.99) })}\n`,
);
session.close();
process.exit(0);
