/**
 * The issue's "Report RPC/s vs bare store call/s" figure alone, quickly and repeatably:
 *
 *   node --import tsx bench/report-rpc.ts [--streams 200,2000] [--seconds 5] [--concurrency 16]
 *                                         [--cpu-prof DIR]
 *
 * For each stream count: a real `nixfleet-control-plane serve` on a fresh SQLite database, that
 * many agents' mTLS Session streams (bench/agents.ts, its own process), then unary Reports with
 * `concurrency` in flight spread over the agents' own connections; then, with the control plane
 * stopped, `recordReport` of the same input in a bare loop on the same database
 * (bench/store-loop.ts). Server CPU is read from /proc around the Report phase, so the figure per
 * Report is the process's CPU time, not wall clock (the machine is shared). Two ratios: Report/s ÷
 * bare call/s (wall clock: the figure the issue names, but on a loaded 2-core machine it moves with
 * the load generator's and other processes' share of the cores), and bare CPU per call ÷ server CPU
 * per Report (what each costs, much less sensitive to load). Prints one JSON line per stream count
 * and a table; `--cpu-prof` writes the control plane's profile to DIR.
 */
import { writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { createPki } from "../test/fixtures/pki.js";
import { programArgs } from "../test/fixtures/programs.js";
import { makeTempDir, removeTempDir } from "../test/fixtures/tmp.js";
import { mintClientCerts } from "./certs.js";
import { child, lineChild } from "./child.js";
import { cpuMs } from "./proc-stats.js";

const argv = process.argv.slice(2);
const opt = (name: string, fallback: string) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1]! : fallback;
};
const STREAMS = opt("--streams", "200,2000").split(",").map(Number);
const SECONDS = Number(opt("--seconds", "5"));
const CONCURRENCY = Number(opt("--concurrency", "16"));
const CPU_PROF = argv.includes("--cpu-prof") ? opt("--cpu-prof", "") : null;

interface Figures {
  streams: number;
  reportRps: number;
  reportErrors: number;
  serverCpuUsPerReport: number;
  storeLoopRps: number;
  storeLoopCpuUsPerCall: number;
  ratio: number;
  cpuRatio: number;
  loadavg: number[];
}

async function measure(dir: string, streams: number): Promise<Figures> {
  const pki = createPki(join(dir, "pki"));
  const minted = mintClientCerts(pki, "agent-", streams);
  const certsFile = join(dir, "agent-certs.json");
  writeFileSync(certsFile, JSON.stringify(minted));
  const db = join(dir, "report.db");
  const cp = lineChild(process.execPath, [
    ...(CPU_PROF ? ["--cpu-prof", "--cpu-prof-dir", CPU_PROF] : []),
    ...programArgs("control-plane"),
    "serve",
    "--listen",
    "127.0.0.1:0",
    "--db-path",
    db,
    "--tls-cert",
    pki.server.cert,
    "--tls-key",
    pki.server.key,
    "--client-ca",
    pki.ca,
    "--heartbeat-interval",
    "60",
  ]);
  const listening = await cp.waitLine((l) => l.includes('"msg":"listening"'));
  const url = (JSON.parse(listening) as { url: string }).url;
  const argsFile = join(dir, "agents.json");
  writeFileSync(
    argsFile,
    JSON.stringify({
      certsFile,
      ca: pki.ca,
      heartbeatMs: 60_000,
      backoffMaxMs: 30_000,
      roundTimeoutMs: 120_000,
    }),
  );
  const agents = child("agents.ts", [argsFile]);
  try {
    const connected = await agents.command(`connect ${url}`);
    if (Number(connected["failed"]) > 0)
      throw new Error(`${String(connected["failed"])} streams failed to connect`);
    // Warm-up (the JIT, the statement cache), not measured.
    await agents.command(`report 1 ${CONCURRENCY}`);
    const pid = cp.proc.pid!;
    const cpu0 = cpuMs(pid);
    const report = await agents.command(`report ${SECONDS} ${CONCURRENCY}`);
    const cpu = cpuMs(pid) - cpu0;
    const load = loadavg();
    agents.proc.stdin!.end("quit\n");
    await agents.exited;
    cp.proc.kill("SIGTERM");
    await cp.exited;
    const loop = child("store-loop.ts", [
      db,
      String(SECONDS),
      ...minted.certs.slice(0, 1000).map((c) => c.cn),
    ]);
    const bare = JSON.parse(await loop.waitLine((l) => l.startsWith("{"))) as {
      rps: number;
      cpuUsPerCall: number;
    };
    const requests = Number(report["requests"]);
    const serverCpuUsPerReport = (cpu * 1000) / Math.max(1, requests);
    return {
      streams,
      reportRps: Number(report["rps"]),
      reportErrors: Number(report["errors"]),
      serverCpuUsPerReport,
      storeLoopRps: bare.rps,
      storeLoopCpuUsPerCall: bare.cpuUsPerCall,
      ratio: Number(report["rps"]) / bare.rps,
      cpuRatio: bare.cpuUsPerCall / serverCpuUsPerReport,
      loadavg: load.map((x) => Math.round(x * 10) / 10),
    };
  } finally {
    agents.proc.kill();
    if (cp.proc.exitCode === null && cp.proc.signalCode === null) cp.proc.kill("SIGTERM");
  }
}

const rows: Figures[] = [];
for (const streams of STREAMS) {
  const dir = makeTempDir("nixfleet-report-bench-");
  try {
    const f = await measure(dir, streams);
    rows.push(f);
    process.stdout.write(`${JSON.stringify(f)}\n`);
  } finally {
    removeTempDir(dir);
  }
}
const r = (x: number) => Math.round(x).toLocaleString("en");
process.stdout.write(
  `\n| streams | Report RPC/s | bare store call/s | ratio | server CPU µs / Report | store loop CPU µs / call | CPU ratio | load avg |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n`,
);
for (const f of rows)
  process.stdout.write(
    `| ${f.streams} | ${r(f.reportRps)}${f.reportErrors ? ` (${f.reportErrors} errors)` : ""} | ${r(f.storeLoopRps)} | ${f.ratio.toFixed(2)} | ${r(f.serverCpuUsPerReport)} | ${r(f.storeLoopCpuUsPerCall)} | ${f.cpuRatio.toFixed(2)} | ${f.loadavg.join(" ")} |\n`,
  );
