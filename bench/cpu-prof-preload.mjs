/**
 * `node --cpu-prof` for a process the bench starts through a fixture it cannot give node flags:
 * Node 20 refuses --cpu-prof in NODE_OPTIONS, but allows `--import` of this module, which runs
 * the V8 profiler through the inspector and writes a `.cpuprofile` (Chrome DevTools format) to
 * $NIXFLEET_BENCH_CPU_PROF_DIR when the process exits. The inspector session of the process's
 * own thread answers synchronously, so stopping inside the `exit` handler works.
 */
import { writeFileSync } from "node:fs";
import { Session } from "node:inspector";
import { join } from "node:path";

const dir = process.env.BENCH_CPU_PROF_DIR;
if (dir) {
  const session = new Session();
  session.connect();
  session.post("Profiler.setSamplingInterval", { interval: 1000 });
  session.post("Profiler.enable");
  session.post("Profiler.start");
  process.on("exit", () => {
    session.post("Profiler.stop", (err, result) => {
      if (!err) writeFileSync(join(dir, `agent-${process.pid}.cpuprofile`), JSON.stringify(result.profile));
    });
  });
}
