/**
 * Loaded into the benched agent with `--import` (through NODE_OPTIONS): counts the processes it
 * spawns (every child_process call goes through ChildProcess.prototype.spawn) and, on SIGUSR2,
 * writes what the bench cannot see through /proc — the spawned commands, its own CPU time in µs and
 * its memory usage — and, with `<file>.gc` present, the breakdown (V8 heap spaces, code) and the live
 * heap after a full collection — to $BENCH_AGENT_PROBE as JSON.
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
    // The memory breakdown only when asked for (a `.gc` file beside the answer): heap and code
    // statistics walk V8's spaces (≈ 4 ms), which a cycle window between two probes would
    // otherwise count as the agent's own CPU.
    let spaces;
    let codeKB;
    let afterGc;
    if (existsSync(`${out}.gc`)) {
      spaces = Object.fromEntries(
        getHeapSpaceStatistics().map((s) => [s.space_name, Math.round(s.space_used_size / 1024)]),
      );
      const code = getHeapCodeStatistics();
      codeKB = Math.round((code.code_and_metadata_size + code.bytecode_and_metadata_size) / 1024);
      // And the live heap after a full collection.
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
        codeKB,
        resourceUsage,
        monoUs,
      }),
    );
  });
}
