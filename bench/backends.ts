/**
 * The store backends side by side (`npm run bench -- --backend sqlite,postgres`): unary
 * GetDesiredGeneration, Report throughput and the push fan-out of one rollout batch, measured the
 * same way on the embedded SQLite store (one process) and on PostgreSQL (two replicas: the
 * rollout is created on the first, every Session stream is held by the second, so each push
 * crosses replicas through LISTEN/NOTIFY). Ratios are PostgreSQL / SQLite.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FleetService, RolloutStrategy } from "../src/gen/nixfleet/v1/fleet_pb.js";
import type { Pki } from "../test/fixtures/pki.js";
import { postgresUnavailable, sharedPostgres } from "../test/fixtures/postgres.js";
import { programArgs } from "../test/fixtures/programs.js";
import { mintClientCerts } from "./certs.js";
import { type Child, child, lineChild, ROOT } from "./child.js";

export type Backend = "sqlite" | "postgres";

export interface BackendFigures {
  backend: Backend;
  unaryRps: number;
  reportRps: number;
  fanoutP50Ms: number;
  fanoutP99Ms: number;
  missing: number;
}

export interface BackendOptions {
  dir: string;
  pki: Pki;
  streams: number;
  seconds: number;
  rounds: number;
  concurrency: number;
  log: (line: string) => void;
}

/** `--backend a,b`; by default both, or SQLite alone when no PostgreSQL server can be started here. */
export function backendsFromArgs(argv: readonly string[]): Backend[] {
  const i = argv.indexOf("--backend");
  if (i < 0) return postgresUnavailable() ? ["sqlite"] : ["sqlite", "postgres"];
  const names = (argv[i + 1] ?? "").split(",").filter(Boolean);
  for (const n of names)
    if (n !== "sqlite" && n !== "postgres")
      throw new Error(`--backend: unknown backend ${n} (sqlite, postgres)`);
  return names as Backend[];
}

const pct = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor(xs.length * p))] ?? Number.NaN;

async function startReplica(o: BackendOptions, dbArgs: string[]): Promise<{ cp: Child; url: string }> {
  const cp = lineChild(process.execPath, [
    ...programArgs("control-plane"),
    "serve",
    "--listen",
    "127.0.0.1:0",
    ...dbArgs,
    "--tls-cert",
    o.pki.server.cert,
    "--tls-key",
    o.pki.server.key,
    "--client-ca",
    o.pki.ca,
    "--heartbeat-interval",
    "10",
  ]);
  const line = await cp.waitLine((l) => l.includes('"msg":"listening"'));
  return { cp, url: JSON.parse(line).url as string };
}

export async function measureBackend(o: BackendOptions, backend: Backend): Promise<BackendFigures> {
  const dbArgs =
    backend === "sqlite"
      ? ["--db-path", join(o.dir, `backend-${backend}.db`)]
      : ["--database-url", await (await sharedPostgres()).database()];
  const key = execFileSync(
    process.execPath,
    [
      ...programArgs("control-plane"),
      "keys",
      "create",
      "--init",
      ...dbArgs,
      "--name",
      "bench",
      "--role",
      "admin",
    ],
    { cwd: ROOT },
  )
    .toString()
    .trim();
  const replicas = [await startReplica(o, dbArgs)];
  if (backend === "postgres") replicas.push(await startReplica(o, dbArgs));
  const [first, last] = [replicas[0]!, replicas.at(-1)!];
  const client = createClient(
    FleetService,
    createGrpcTransport({
      baseUrl: first.url,
      nodeOptions: { ca: readFileSync(o.pki.ca) },
      interceptors: [
        (next) => (req) => {
          req.header.set("authorization", `Bearer ${key}`);
          return next(req);
        },
      ],
    }),
  );
  let agents: Child | null = null;
  try {
    const minted = mintClientCerts(o.pki, `bk-${backend.slice(0, 2)}-`, o.streams);
    const names = minted.certs.map((c) => c.cn);
    const certsFile = join(o.dir, `backend-${backend}-certs.json`);
    writeFileSync(certsFile, JSON.stringify(minted));
    const argsFile = join(o.dir, `backend-${backend}-agents.json`);
    writeFileSync(
      argsFile,
      JSON.stringify({
        certsFile,
        ca: o.pki.ca,
        heartbeatMs: 10_000,
        backoffMaxMs: 30_000,
        roundTimeoutMs: 60_000,
      }),
    );
    agents = child("agents.ts", [argsFile]);
    o.log(
      `${backend}: ${o.streams} Session streams on ${backend === "postgres" ? "the second replica" : "it"}…`,
    );
    await agents.command(`connect ${last.url}`);

    o.log(`${backend}: unary GetDesiredGeneration…`);
    const cert = o.pki.client(names[0]!);
    const load = child("load.ts", [
      JSON.stringify({
        url: first.url,
        target: "grpc",
        machineId: names[0],
        ca: o.pki.ca,
        cert: cert.cert,
        key: cert.key,
        concurrency: o.concurrency,
        seconds: o.seconds,
      }),
    ]);
    if ((await load.exited) !== 0) throw new Error(`${backend}: the unary load generator failed`);
    const unary = JSON.parse(load.lines.at(-1)!) as { rps: number; errors: number; lastError: string };
    if (unary.errors) throw new Error(`${backend}: unary errors (last: ${unary.lastError})`);

    const p50: number[] = [];
    const p99: number[] = [];
    let missing = 0;
    for (let r = 1; r <= o.rounds; r++) {
      const marker = `bk${backend}r${r}x`;
      const { release } = await client.createRelease({
        entries: names.map((hostname, i) => ({
          hostname,
          storePath: `/nix/store/${String(i)
            .padStart(32, "0")
            .replace(/[eotu]/g, "0")}-nixos-system-${marker}`,
        })),
      });
      await agents.command(`arm ${marker}`);
      const done = agents.waitLine((l) => l.includes('"event":"round"'), agents.lines.length);
      const t0 = Date.now();
      const { rollout } = await client.createRollout({
        releaseId: release!.id,
        target: { tags: ["bench"] },
        strategy: RolloutStrategy.ALL_AT_ONCE,
        healthTimeoutSeconds: 3600,
      });
      const round = JSON.parse(await done) as { received: number[]; missing: number };
      const lat = round.received.map((t) => t - t0).sort((a, b) => a - b);
      p50.push(pct(lat, 0.5));
      p99.push(pct(lat, 0.99));
      missing += round.missing;
      o.log(`${backend}: fan-out round ${r}: p99 ${pct(lat, 0.99)} ms, ${round.missing} missing`);
      await client.cancelRollout({ rolloutId: rollout!.id });
      await sleep(500);
    }

    o.log(`${backend}: Report throughput…`);
    const report = await agents.command(`report ${o.seconds} ${o.concurrency}`);
    if (Number(report["errors"]))
      throw new Error(`${backend}: Report errors (last: ${String(report["lastError"])})`);
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    return {
      backend,
      unaryRps: unary.rps,
      reportRps: Number(report["rps"]),
      fanoutP50Ms: median(p50),
      fanoutP99Ms: median(p99),
      missing,
    };
  } finally {
    if (agents) {
      agents.proc.stdin!.end("quit\n");
      await agents.exited;
    }
    for (const r of replicas) {
      r.cp.proc.kill("SIGTERM");
      await r.cp.exited;
    }
  }
}

/** Rows for the report table: PostgreSQL against SQLite (or one backend's values alone). */
export function backendRows(figures: BackendFigures[], streams: number, concurrency: number) {
  const sqlite = figures.find((f) => f.backend === "sqlite");
  const pg = figures.find((f) => f.backend === "postgres");
  const subject = pg ?? sqlite;
  if (!subject) return [];
  const base = pg && sqlite ? sqlite : subject;
  const baseline = base === subject ? `${subject.backend} (alone)` : "SQLite, one process";
  const name = (what: string) => `${what}, ${subject.backend === "postgres" ? "PostgreSQL" : "SQLite"}`;
  const row = (what: string, unit: string, f: (x: BackendFigures) => number) => ({
    name: name(what),
    value: f(subject),
    unit,
    baseline,
    baselineValue: f(base),
    ratio: f(subject) / f(base),
  });
  return [
    row(`GetDesiredGeneration grpc (c=${concurrency})`, "req/s", (x) => x.unaryRps),
    row(`Report over Session conns (c=${concurrency})`, "req/s", (x) => x.reportRps),
    {
      ...row(`fan-out to ${streams} streams (p99)`, "ms", (x) => x.fanoutP99Ms),
      detail: {
        note: "PostgreSQL: rollout created on replica 1, streams held by replica 2",
        p50Ms: subject.fanoutP50Ms,
        baselineP50Ms: base.fanoutP50Ms,
        missing: subject.missing,
      },
    },
  ];
}
