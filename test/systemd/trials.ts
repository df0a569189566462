/**
 * Power-cut trials as a script (not a test): `node --import tsx test/systemd/trials.ts
 * --power-cuts 20 [--at verifying,rolling_back]` runs that many trials on one agent machine,
 * cycling through the cut points,
 * prints the table and exits 1 when any trial was untruthful. Needs root and systemd-nspawn, and
 * `npm run build` first. See test/fixtures/power-cut-trials.ts for what each trial checks.
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { AgentMachine } from "../fixtures/agent-machine.js";
import { Fleet } from "../fixtures/fleet.js";
import type { SystemSpec } from "../fixtures/nix.js";
import { nspawnUnavailable } from "../fixtures/nspawn.js";
import {
  CUT_POINTS,
  type CutPoint,
  needsUnhealthy,
  powerCutTrial,
  type TrialResult,
  trialTable,
} from "../fixtures/power-cut-trials.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

const { values } = parseArgs({
  options: {
    "power-cuts": { type: "string", default: "10" },
    /** Comma-separated cut points to cycle through (default: all). */
    at: { type: "string", default: CUT_POINTS.join(",") },
  },
});
const cycle = values.at.split(",") as CutPoint[];
const unknown = cycle.filter((p) => !CUT_POINTS.includes(p));
if (unknown.length > 0) {
  process.stderr.write(`--at: unknown cut point(s) ${unknown.join(", ")}; use ${CUT_POINTS.join(", ")}\n`);
  process.exit(2);
}
const count = Number(values["power-cuts"]);
if (!Number.isInteger(count) || count < 1) {
  process.stderr.write(`--power-cuts must be a positive integer, got ${values["power-cuts"]}\n`);
  process.exit(2);
}
const unavailable = nspawnUnavailable();
if (unavailable) {
  process.stderr.write(`power-cut trials need the systemd tier: ${unavailable}\n`);
  process.exit(2);
}

const points = Array.from({ length: count }, (_, i) => cycle[i % cycle.length]!);
const systems: SystemSpec[] = points.map((p, i) => ({ label: `t${i + 1}`, healthy: !needsUnhealthy(p) }));
const dir = makeTempDir("nixfleet-trials-");
const cleanups: Array<() => Promise<void>> = [];
const fleet = await Fleet.create({ dir, hosts: [] });
const results: TrialResult[] = [];
try {
  const am = await AgentMachine.start(
    fleet,
    { after: (fn) => cleanups.push(fn) },
    {
      name: "trials",
      tags: ["trials"],
      stateDir: join(dir, "trials"),
      systems,
      settings: { verifyTimeout: 8 },
    },
  );
  for (const [i, point] of points.entries()) {
    const result = await powerCutTrial(am, point, `t${i + 1}`);
    results.push(result);
    process.stderr.write(
      `trial ${i + 1}/${count}: cut at ${point} (in ${result.cutIn}) → booted ${result.booted}, final ${result.final}, ${result.outcome}${result.violations.length ? `\n  ${result.violations.join("\n  ")}` : ""}\n`,
    );
  }
} finally {
  for (const fn of cleanups.reverse()) await fn();
  await fleet.close();
  removeTempDir(dir);
}
process.stdout.write(`${trialTable(results)}\n`);
process.exit(results.some((r) => r.violations.length > 0) ? 1 : 0);
