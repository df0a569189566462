/**
 * GetFleetStatus at fleet scale: a real control plane (SQLite, in this process, plain h2c) with N
 * machines that reported (tags, a desired generation, a health report, some failing), timed over
 * gRPC, Connect binary and JSON (median of R rounds), with the response size; the server-side
 * parts on their own: the store query, the old full build (MachineStatus + toBinary), the
 * handler's binary and JSON paths (status versions, kept statuses, encoding); a raw HTTP/2 gRPC
 * client that only collects the body (server and transport without client decoding; gzip and
 * identity); protobuf encoding and decoding alone; WatchFleet's snapshot and one change.
 *
 *   node --import tsx bench/fleet-status.ts [--machines 10000] [--rounds 9]
 *
 * Prints one JSON line per figure (milliseconds and bytes).
 */
import { existsSync, rmSync } from "node:fs";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { create, fromBinary, toBinary, toJsonString } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { createLogger } from "../src/common/logger.js";
import { generateSecret, hashSecret, newKeyId } from "../src/control-plane/auth/api-keys.js";
import { ControlPlane } from "../src/control-plane/control-plane.js";
import { machineStatusToProto } from "../src/control-plane/services/convert.js";
import { FleetStatusEncoder } from "../src/control-plane/services/fleet-status-encoder.js";
import type { MachineRecord } from "../src/control-plane/store/records.js";
import {
  FleetService,
  GetFleetStatusResponseSchema,
  MachineStatusSchema,
} from "../src/gen/nixfleet/v1/fleet_pb.js";
import { Outcome } from "../src/gen/nixfleet/v1/types_pb.js";

const { values } = parseArgs({
  options: {
    machines: { type: "string", default: "10000" },
    rounds: { type: "string", default: "9" },
    // Keep the populated database here and reuse it on the next run (populating takes a while).
    db: { type: "string" },
  },
});
const machines = Number(values.machines);
const rounds = Number(values.rounds);

const dir = values.db ?? join(tmpdir(), `nixfleet-fleet-status-${process.pid}`);
const reuse = values.db !== undefined && existsSync(join(dir, "state.db"));
const cp = new ControlPlane({
  listen: { host: "127.0.0.1", port: 0 },
  dbPath: join(dir, "state.db"),
  tls: null,
  allowInsecure: true,
  metricsListen: null,
  metricsRequireKey: false,
  staleAfterSeconds: 300,
  pollHintSeconds: 5,
  executorTickMs: 1000,
  heartbeatIntervalSeconds: 15,
  reportRetentionHours: 168,
  logger: createLogger({ name: "bench", level: "warn" }),
});

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const gen = (i: number, name: string) =>
  `/nix/store/${i.toString(32).padStart(32, "0").slice(0, 32)}-nixos-system-${name}`;

async function populate(): Promise<void> {
  const store = cp.store;
  const now = Date.now();
  for (let i = 0; i < machines; i++) {
    const id = `host-${String(i).padStart(5, "0")}`;
    const current = gen(1, id);
    await store.recordReport(
      {
        machineId: id,
        currentGeneration: current,
        desiredGeneration: current,
        desiredRevision: 1,
        outcome: i % 50 === 0 ? Outcome.APPLY_FAILED : Outcome.UP_TO_DATE,
        success: i % 50 !== 0,
        message: i % 50 === 0 ? "switch-to-configuration exited with 4: nginx.service failed" : "",
        deploymentId: `d-${i}`,
        tags: [`dc-${i % 3}`, i % 2 ? "web" : "db", `rack-${i % 40}`],
        agentVersion: "0.1.0",
        uptimeSeconds: 86_400 + i,
        agentTime: now,
      },
      now,
    );
    await store.recordHealth(
      {
        machineId: id,
        generation: current,
        allPassed: i % 25 !== 0,
        results: [
          { name: "nginx", kind: 1, passed: i % 25 !== 0, durationMs: 12, message: "" },
          { name: "disk", kind: 2, passed: true, durationMs: 3, message: "" },
        ],
        postApply: false,
        deploymentId: `d-${i}`,
        agentTime: now,
      },
      now,
    );
    if (i % 10 !== 0)
      await store.setDesired(
        { machineId: id, storePath: i % 7 ? current : gen(2, id), cacheUrl: "" },
        "local:bench",
        now,
      );
  }
}

async function main(): Promise<void> {
  await cp.start();
  const secret = generateSecret();
  await cp.store.createApiKey(
    { id: newKeyId(), name: `bench-${Date.now()}`, role: "readonly", hash: hashSecret(secret) },
    "local:bench",
    Date.now(),
  );
  if (!reuse) {
    const t0 = Date.now();
    await populate();
    console.error(`populated ${machines} machines in ${Date.now() - t0} ms`);
  }
  const headers = { authorization: `Bearer ${secret}` };
  const client = (useBinaryFormat: boolean) =>
    createClient(
      FleetService,
      createConnectTransport({ baseUrl: cp.url, httpVersion: "2", useBinaryFormat }),
    );
  const binary = client(true);
  const json = client(false);
  const grpc = createClient(FleetService, createGrpcTransport({ baseUrl: cp.url }));

  // Wall clock and this process's CPU (server and client are both in it): on a shared, loaded
  // machine the CPU figure moves far less than the wall clock.
  let cpuMs: number[] = [];
  const time = async <T>(fn: () => Promise<T>): Promise<[number, T]> => {
    const cpu = process.cpuUsage();
    const start = performance.now();
    const value = await fn();
    const used = process.cpuUsage(cpu);
    cpuMs.push((used.user + used.system) / 1000);
    return [performance.now() - start, value];
  };
  const round = (x: number) => Math.round(x * 10) / 10;
  const report = (name: string, ms: number[], extra: Record<string, unknown> = {}) => {
    process.stdout.write(
      `${JSON.stringify({ figure: name, machines, medianMs: round(median(ms)), minMs: round(Math.min(...ms)), medianCpuMs: round(median(cpuMs)), ...extra })}\n`,
    );
    cpuMs = [];
  };

  // Warm up both paths (JIT, statement cache) before measuring.
  await binary.getFleetStatus({}, { headers });
  await json.getFleetStatus({}, { headers });
  await grpc.getFleetStatus({}, { headers });

  const listMs: number[] = [];
  for (let i = 0; i < rounds; i++) {
    listMs.push(
      (
        await time(() =>
          cp.store.listMachines({ tags: [], match: "all", lifecycle: null, afterId: null, limit: 1e6 }),
        )
      )[0],
    );
  }
  report("store.listMachines", listMs);

  // What the handler does, without the transport: the query, the MachineStatus messages, encoding.
  const live = { connected: () => false, lastSeen: (m: MachineRecord) => m.lastSeen };
  const handlerMs: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const [ms] = await time(async () => {
      const list = await cp.store.listMachines({
        tags: [],
        match: "all",
        lifecycle: null,
        afterId: null,
        limit: 1e6,
      });
      const now = Date.now();
      const machines = list.map((m) =>
        create(MachineStatusSchema, machineStatusToProto(m, live, now, 300_000)),
      );
      return toBinary(GetFleetStatusResponseSchema, create(GetFleetStatusResponseSchema, { machines }));
    });
    handlerMs.push(ms);
  }
  report("server work: query + MachineStatus + toBinary", handlerMs);

  // What the handler does now: status versions, re-reading only moved machines, kept bytes.
  const encoder = new FleetStatusEncoder(live, 300_000);
  const filter = { tags: [], match: "all", lifecycle: null } as const;
  const binaryPathMs: number[] = [];
  for (let i = 0; i < rounds + 1; i++) {
    const [ms] = await time(async () =>
      toBinary(
        GetFleetStatusResponseSchema,
        await encoder.response(cp.store, filter, "binary", Date.now, 300),
      ),
    );
    // The first call builds every machine's bytes; the rest reuse them (the fleet is unchanged).
    if (i === 0) cpuMs = [];
    else binaryPathMs.push(ms);
  }
  report("server work, binary path (kept per-machine bytes): versions + response + toBinary", binaryPathMs);
  const jsonPathMs: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const [ms] = await time(async () =>
      toJsonString(
        GetFleetStatusResponseSchema,
        await encoder.response(cp.store, filter, "json", Date.now, 300),
      ),
    );
    jsonPathMs.push(ms);
  }
  report("server work, JSON path (kept messages): versions + response + toJsonString", jsonPathMs);

  const grpcMs: number[] = [];
  for (let i = 0; i < rounds; i++) grpcMs.push((await time(() => grpc.getFleetStatus({}, { headers })))[0]);
  report("GetFleetStatus gRPC", grpcMs);

  // What the server and the transport cost without a decoding client: a raw HTTP/2 gRPC call
  // that only collects the body, with gzip (what Connect and grpc clients ask for) and without.
  // Large flow-control windows, as gRPC clients open them: Node's 64 KB default makes a 3 MB body
  // wait for dozens of WINDOW_UPDATE round trips (each one a delayed ACK on the h2c listener).
  const session = http2.connect(cp.url, { settings: { initialWindowSize: 2 ** 24 } });
  session.on("connect", () => session.setLocalWindowSize(2 ** 24));
  for (const encoding of ["gzip", "identity"]) {
    await rawGrpcCall(session, secret, encoding);
    const rawMs: number[] = [];
    let bytes = 0;
    for (let i = 0; i < rounds; i++) {
      const [ms, n] = await time(() => rawGrpcCall(session, secret, encoding));
      rawMs.push(ms);
      bytes = n;
    }
    report(`GetFleetStatus gRPC, raw client (no decoding), ${encoding}`, rawMs, { bytes });
  }
  session.close();

  const binMs: number[] = [];
  let size = 0;
  for (let i = 0; i < rounds; i++) {
    const [ms, res] = await time(() => binary.getFleetStatus({}, { headers }));
    binMs.push(ms);
    size = toBinary(GetFleetStatusResponseSchema, res).length;
  }
  report("GetFleetStatus connect+proto", binMs, { bytes: size });

  const encodeMs: number[] = [];
  const res = await binary.getFleetStatus({}, { headers });
  for (let i = 0; i < rounds; i++)
    encodeMs.push((await time(async () => toBinary(GetFleetStatusResponseSchema, res)))[0]);
  report("toBinary of the response (server side)", encodeMs);
  const bytes = toBinary(GetFleetStatusResponseSchema, res);
  const decodeMs: number[] = [];
  for (let i = 0; i < rounds; i++)
    decodeMs.push((await time(async () => fromBinary(GetFleetStatusResponseSchema, bytes)))[0]);
  report("fromBinary of the response (client side)", decodeMs);

  // WatchFleet: the snapshot (all pages), then how long one change takes to reach the watcher.
  const snapMs: number[] = [];
  const changeMs: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const abort = new AbortController();
    const stream = binary.watchFleet({}, { headers, signal: abort.signal })[Symbol.asyncIterator]();
    await time(async () => {
      for (;;) {
        const { value } = await stream.next();
        if (value?.message.case === "snapshot" && value.message.value.last) break;
      }
    }).then(([ms]) => snapMs.push(ms));
    const start = performance.now();
    cp.fleetChanges.publish("host-00001", "report");
    for (;;) {
      const { value } = await stream.next();
      if (value?.message.case === "change") break;
    }
    changeMs.push(performance.now() - start);
    abort.abort();
    await stream.return?.();
  }
  report("WatchFleet snapshot (all pages)", snapMs);
  cpuMs = [0];
  report("WatchFleet one change to the watcher", changeMs);

  const jsonMs: number[] = [];
  for (let i = 0; i < rounds; i++) jsonMs.push((await time(() => json.getFleetStatus({}, { headers })))[0]);
  report("GetFleetStatus connect+json", jsonMs);
}

/** One GetFleetStatus over gRPC on this HTTP/2 connection; resolves with the body's length. */
function rawGrpcCall(
  session: http2.ClientHttp2Session,
  secret: string,
  acceptEncoding: string,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const stream = session.request({
      ":method": "POST",
      ":path": "/nixfleet.v1.FleetService/GetFleetStatus",
      "content-type": "application/grpc",
      te: "trailers",
      "grpc-accept-encoding": acceptEncoding,
      authorization: `Bearer ${secret}`,
    });
    let bytes = 0;
    stream.on("data", (chunk: Buffer) => {
      bytes += chunk.length;
    });
    stream.on("error", reject);
    stream.on("end", () => resolve(bytes));
    // An empty GetFleetStatusRequest: one uncompressed frame of length 0.
    stream.end(Buffer.alloc(5));
  });
}

try {
  await main();
} finally {
  await cp.stop();
  if (values.db === undefined) rmSync(dir, { recursive: true, force: true });
}
