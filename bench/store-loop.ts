/**
 * The bare store call behind a Report (recordReport of the same validated input), in a loop on
 * the bench's database with the control plane stopped: the ceiling the Report RPC is compared
 * with. Args: db seconds ids… Prints {"rps", "cpuUsPerCall"} (this process's CPU time per call).
 */
import { create } from "@bufbuild/protobuf";
import { reportFromProto } from "../src/control-plane/services/agent-input.js";
import { SqliteFleetStore } from "../src/control-plane/store/sqlite-store.js";
import { ReportRequestSchema } from "../src/gen/nixfleet/v1/agent_pb.js";
import { benchReport } from "./grpc-frames.js";

const [db, seconds, ...ids] = process.argv.slice(2) as [string, string, ...string[]];
const inputs = ids.map((id) => reportFromProto(create(ReportRequestSchema, benchReport(id))));
const { store } = await SqliteFleetStore.open({
  path: db,
  lockWaitMs: 10_000,
  onLockWait: () => {},
  now: () => Date.now(),
});
const end = Date.now() + Number(seconds) * 1000;
const t0 = Date.now();
const cpu0 = process.cpuUsage();
let n = 0;
while (Date.now() < end) {
  await store.recordReport(inputs[n % inputs.length]!, Date.now());
  n++;
}
const cpu = process.cpuUsage(cpu0);
process.stdout.write(
  `${JSON.stringify({ rps: n / ((Date.now() - t0) / 1000), cpuUsPerCall: (cpu.user + cpu.system) / n })}\n`,
);
await store.close();
