/**
 * Loaded into the benched agent with `--import` (through NODE_OPTIONS): counts the processes it
 * spawns (every child_process call goes through ChildProcess.prototype.spawn) and, on SIGUSR2,
 * writes what the bench cannot see through /proc — the spawned commands, its own CPU time in µs and
 * the breakdown of its memory (V8 heap, external, array buffers, code; with `<file>.gc` present,
 * also the live heap after a full collection) — to $BENCH_AGENT_PROBE as JSON.
 */
import { ChildProcess } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import {
  getHeapCodeStatistics,
  getHeapSpaceStatistics,
  setFlagsFromString,
  writeHeapSnapshot,
} from "node:v8";
import { runInNewContext } from "node:vm";

const out = process.env.BENCH_AGENT_PROBE;
// Experiments: V8 flags set as early as src/agent/heap.ts sets its own (before the agent loads).
if (process.env.BENCH_AGENT_V8_FLAGS) setFlagsFromString(process.env.BENCH_AGENT_V8_FLAGS);
if (out) {
  const spawned = [];
  const original = ChildProcess.prototype.spawn;
  ChildProcess.prototype.spawn = function (options) {
    const args = options?.args ?? [];
    // The program and its first argument name the call well enough (`nix-store --realise`).
    spawned.push(args.slice(0, 2).join(" ").slice(0, 120));
    return original.call(this, options);
  };
  process.on("SIGUSR2", () => {
    // First, so the figures below do not count the probe's own work.
    const resourceUsage = process.resourceUsage();
    // CLOCK_MONOTONIC in µs, the clock of a V8 CPU profile's timestamps: cycle windows in a profile.
    const monoUs = Number(process.hrtime.bigint() / 1000n);
    const spaces = Object.fromEntries(
      getHeapSpaceStatistics().map((s) => [s.space_name, Math.round(s.space_used_size / 1024)]),
    );
    const code = getHeapCodeStatistics();
    // Asked for (a `.gc` file beside the answer): the live heap after a full collection too.
    let afterGc;
    if (existsSync(`${out}.gc`)) {
      setFlagsFromString("--expose-gc");
      runInNewContext("gc")();
      afterGc = process.memoryUsage();
      // BENCH_AGENT_SNAPSHOT names a file for a heap snapshot of the idle agent.
      if (process.env.BENCH_AGENT_SNAPSHOT) writeHeapSnapshot(process.env.BENCH_AGENT_SNAPSHOT);
    }
    writeFileSync(
      out,
      JSON.stringify({
        spawned,
        memory: process.memoryUsage(),
        afterGc,
        heapSpacesUsedKB: spaces,
        codeKB: Math.round((code.code_and_metadata_size + code.bytecode_and_metadata_size) / 1024),
        resourceUsage,
        monoUs,
      }),
    );
  });
}
