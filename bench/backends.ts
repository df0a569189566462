/**
 * The store backends side by side (`npm run bench -- --backend sqlite,postgres`): unary
 * GetDesiredGeneration, Report throughput and the push fan-out of one rollout batch, measured the
 * same way on the embedded SQLite store (one process) and on PostgreSQL (two replicas). On
 * PostgreSQL half the Session streams are held by the executor's leader and half by the other
 * replica, so one batch measures both the store's cost (leader's streams, against SQLite) and the
 * cost of crossing replicas through LISTEN/NOTIFY (the other's, against the leader's). Ratios are
 * PostgreSQL / SQLite, and cross-replica / same-replica.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { FleetService, RolloutStrategy } from "../src/gen/nixfleet/v1/fleet_pb.js";
import type { Pki } from "../test/fixtures/pki.js";
import { postgresUnavailable, sharedPostgres } from "../test/fixtures/postgres.js";
import { programArgs } from "../test/fixtures/programs.js";
import { mintClientCerts } from "./certs.js";
import { type Child, child, createAdminKey, lineChild } from "./child.js";

export type Backend = "sqlite" | "postgres";

export interface BackendFigures {
  backend: Backend;
  unaryRps: number;
  reportRps: number;
  /** Streams held by the replica running the executor (the only one with SQLite). */
  fanoutP50Ms: number;
  fanoutP99Ms: number;
  /** PostgreSQL: streams held by the other replica (each push crossed replicas). */
  crossP50Ms?: number;
  crossP99Ms?: number;
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

interface Replica {
  cp: Child;
  url: string;
  pid: number;
}

async function startReplica(o: BackendOptions, dbArgs: string[]): Promise<Replica> {
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
  const line = JSON.parse(await cp.waitLine((l) => l.includes('"msg":"listening"')));
  return { cp, url: line.url as string, pid: line.pid as number };
}

/** The replica holding the executor lease (its holder id is host:pid:random). */
async function leaderOf(databaseUrl: string, replicas: Replica[]): Promise<number> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    for (let i = 0; i < 100; i++) {
      const { rows } = await client.query("SELECT holder FROM executor_lease");
      const pid = Number(
        String(rows[0]?.holder ?? "")
          .split(":")
          .at(-2),
      );
      const index = replicas.findIndex((r) => r.pid === pid);
      if (index >= 0) return index;
      await sleep(100);
    }
    throw new Error("no replica took the executor lease");
  } finally {
    await client.end();
  }
}

/** A load-generator child holding `n` Session streams to `url`; returns it and its machine names. */
async function streams(o: BackendOptions, label: string, n: number, url: string) {
  const minted = mintClientCerts(o.pki, `bk-${label}-`, n);
  const certsFile = join(o.dir, `backend-${label}-certs.json`);
  writeFileSync(certsFile, JSON.stringify(minted));
  const argsFile = join(o.dir, `backend-${label}-agents.json`);
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
  const agents = child("agents.ts", [argsFile]);
  await agents.command(`connect ${url}`);
  return { agents, names: minted.certs.map((c) => c.cn) };
}

export async function measureBackend(o: BackendOptions, backend: Backend): Promise<BackendFigures> {
  const databaseUrl = backend === "postgres" ? await (await sharedPostgres()).database() : null;
  const dbArgs = databaseUrl
    ? ["--database-url", databaseUrl]
    : ["--db-path", join(o.dir, `backend-${backend}.db`)];
  const key = createAdminKey(dbArgs);
  const replicas = [await startReplica(o, dbArgs)];
  if (databaseUrl) replicas.push(await startReplica(o, dbArgs));
  const groups: { agents: Child; names: string[] }[] = [];
  try {
    const leader = databaseUrl ? replicas[await leaderOf(databaseUrl, replicas)]! : replicas[0]!;
    const other = replicas.find((r) => r !== leader);
    const client = createClient(
      FleetService,
      createGrpcTransport({
        baseUrl: leader.url,
        nodeOptions: { ca: readFileSync(o.pki.ca) },
        interceptors: [
          (next) => (req) => {
            req.header.set("authorization", `Bearer ${key}`);
            return next(req);
          },
        ],
      }),
    );
    const perGroup = other ? Math.max(1, Math.floor(o.streams / 2)) : o.streams;
    o.log(
      `${backend}: ${perGroup} Session streams on the executor's replica${other ? `, ${perGroup} on the other` : ""}…`,
    );
    groups.push(await streams(o, `${backend.slice(0, 2)}l`, perGroup, leader.url));
    if (other) groups.push(await streams(o, `${backend.slice(0, 2)}o`, perGroup, other.url));
    const names = groups.flatMap((g) => g.names);

    o.log(`${backend}: unary GetDesiredGeneration…`);
    const cert = o.pki.client(names[0]!);
    const load = child("load.ts", [
      JSON.stringify({
        url: leader.url,
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

    const p50 = groups.map(() => [] as number[]);
    const p99 = groups.map(() => [] as number[]);
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
      for (const g of groups) await g.agents.command(`arm ${marker}`);
      const done = groups.map((g) =>
        g.agents.waitLine((l) => l.includes('"event":"round"'), g.agents.lines.length),
      );
      const t0 = Date.now();
      const { rollout } = await client.createRollout({
        releaseId: release!.id,
        target: { tags: ["bench"] },
        strategy: RolloutStrategy.ALL_AT_ONCE,
        healthTimeoutSeconds: 3600,
      });
      for (const [i, line] of (await Promise.all(done)).entries()) {
        const round = JSON.parse(line) as { received: number[]; missing: number };
        const lat = round.received.map((t) => t - t0).sort((a, b) => a - b);
        p50[i]!.push(pct(lat, 0.5));
        p99[i]!.push(pct(lat, 0.99));
        missing += round.missing;
      }
      o.log(`${backend}: fan-out round ${r}: p99 ${p99.map((x) => `${x.at(-1)} ms`).join(" (leader's) / ")}`);
      await client.cancelRollout({ rolloutId: rollout!.id });
      await sleep(500);
    }

    o.log(`${backend}: Report throughput…`);
    const report = await groups[0]!.agents.command(`report ${o.seconds} ${o.concurrency}`);
    if (Number(report["errors"]))
      throw new Error(`${backend}: Report errors (last: ${String(report["lastError"])})`);
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    return {
      backend,
      unaryRps: unary.rps,
      reportRps: Number(report["rps"]),
      fanoutP50Ms: median(p50[0]!),
      fanoutP99Ms: median(p99[0]!),
      ...(other ? { crossP50Ms: median(p50[1]!), crossP99Ms: median(p99[1]!) } : {}),
      missing,
    };
  } finally {
    for (const g of groups) {
      g.agents.proc.stdin!.end("quit\n");
      await g.agents.exited;
    }
    for (const r of replicas) {
      r.cp.proc.kill("SIGTERM");
      await r.cp.exited;
    }
  }
}

export interface BackendRow {
  name: string;
  value: number;
  unit: string;
  baseline: string;
  baselineValue: number;
  ratio: number;
  detail?: Record<string, unknown>;
}

/** Rows for the report table: PostgreSQL against SQLite (or one backend's values alone). */
export function backendRows(figures: BackendFigures[], streams: number, concurrency: number): BackendRow[] {
  const sqlite = figures.find((f) => f.backend === "sqlite");
  const postgres = figures.find((f) => f.backend === "postgres");
  const subject = postgres ?? sqlite;
  if (!subject) return [];
  const base = postgres && sqlite ? sqlite : subject;
  const baseline = base === subject ? `${subject.backend} (alone)` : "SQLite, one process";
  const name = (what: string) => `${what}, ${subject.backend === "postgres" ? "PostgreSQL" : "SQLite"}`;
  const row = (what: string, unit: string, f: (x: BackendFigures) => number): BackendRow => ({
    name: name(what),
    value: f(subject),
    unit,
    baseline,
    baselineValue: f(base),
    ratio: f(subject) / f(base),
  });
  const half = subject.crossP99Ms === undefined ? streams : Math.floor(streams / 2);
  const rows: BackendRow[] = [
    row(`GetDesiredGeneration grpc (c=${concurrency})`, "req/s", (x) => x.unaryRps),
    row(`Report over Session conns (c=${concurrency})`, "req/s", (x) => x.reportRps),
    {
      ...row("fan-out, executor's replica (p99)", "ms", (x) => x.fanoutP99Ms),
      detail: {
        streams: half,
        batch: streams,
        p50Ms: subject.fanoutP50Ms,
        baselineP50Ms: base.fanoutP50Ms,
        missing: subject.missing,
      },
    },
  ];
  if (subject.crossP99Ms !== undefined) {
    rows.push({
      name: "fan-out, other replica (p99), PostgreSQL",
      value: subject.crossP99Ms,
      unit: "ms",
      baseline: "executor's replica, same batch",
      baselineValue: subject.fanoutP99Ms,
      ratio: subject.crossP99Ms / subject.fanoutP99Ms,
      detail: {
        streams: half,
        batch: streams,
        p50Ms: subject.crossP50Ms,
        baselineP50Ms: subject.fanoutP50Ms,
        missing: subject.missing,
      },
    });
  }
  return rows;
}
