/**
 * Power-cut and kill trials as a script (not a test): `npm run trials -- --power-cuts 100`,
 * `npm run trials -- --kills 100` (both flags may be given; `--at verifying,rolling_back` limits
 * the phases, default all) runs that many trials on one agent machine, cycling through the
 * phases, prints each trial on stderr and the table (per disruption and phase: trials, truthful,
 * untruthful) on stdout, and exits 1 when any trial was untruthful. Needs root and
 * systemd-nspawn; `npm run trials` builds first. See test/fixtures/power-cut-trials.ts for what
 * each trial checks.
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { AgentMachine } from "../fixtures/agent-machine.js";
import { Fleet } from "../fixtures/fleet.js";
import { nspawnUnavailable } from "../fixtures/nspawn.js";
import {
  CUT_POINTS,
  type CutPoint,
  planTrials,
  runTrials,
  trialSystems,
  trialTable,
} from "../fixtures/power-cut-trials.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

const { values } = parseArgs({
  options: {
    "power-cuts": { type: "string", default: "0" },
    kills: { type: "string", default: "0" },
    /** Comma-separated phases to cycle through (default: all). */
    at: { type: "string", default: CUT_POINTS.join(",") },
  },
});
function fail(message: string): never {
  process.stderr.write(`${message}\n`);
  process.exit(2);
}
const cycle = values.at.split(",") as CutPoint[];
const unknown = cycle.filter((p) => !CUT_POINTS.includes(p));
if (unknown.length > 0) fail(`--at: unknown phase(s) ${unknown.join(", ")}; use ${CUT_POINTS.join(", ")}`);
function count(flag: "power-cuts" | "kills"): number {
  const n = Number(values[flag]);
  if (!Number.isInteger(n) || n < 0) fail(`--${flag} must be a non-negative integer, got ${values[flag]}`);
  return n;
}
const plan = planTrials(count("power-cuts"), count("kills"), cycle);
if (plan.length === 0) fail("nothing to do: give --power-cuts N and/or --kills N");
const unavailable = nspawnUnavailable();
if (unavailable) fail(`the trials need the systemd tier: ${unavailable}`);

const dir = makeTempDir("nixfleet-trials-");
const cleanups: Array<() => Promise<void>> = [];
const fleet = await Fleet.create({ dir, hosts: [] });
let results: Awaited<ReturnType<typeof runTrials>> = [];
const started = Date.now();
try {
  const am = await AgentMachine.start(
    fleet,
    { after: (fn) => cleanups.push(fn) },
    {
      name: "trials",
      tags: ["trials"],
      stateDir: join(dir, "trials"),
      systems: trialSystems(plan),
      settings: { verifyTimeout: 8 },
    },
  );
  results = await runTrials(am, plan, (line) => process.stderr.write(`${line}\n`));
} finally {
  for (const fn of cleanups.reverse()) await fn();
  await fleet.close();
  removeTempDir(dir);
}
process.stdout.write(
  `${trialTable(results)}\n${results.length} trials in ${Math.round((Date.now() - started) / 1000)} s\n`,
);
process.exit(results.some((r) => r.violations.length > 0) ? 1 : 0);
