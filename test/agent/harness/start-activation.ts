/**
 * Starts one switch with the real DirectActivator and prints its handle as a JSON line, then
 * waits to be killed — so a test can kill the starting process (like an agent killed mid-switch)
 * and check that the switch lives on and its outcome is still learnable.
 * Usage: node --import tsx start-activation.ts <activation dir> <deployment id> <closure path>
 */
import { DirectActivator } from "../../../src/agent/activation.js";

const [dir, deploymentId, path] = process.argv.slice(2);
if (!dir || !deploymentId || !path) {
  process.stderr.write("usage: start-activation.ts <dir> <deployment id> <closure path>\n");
  process.exit(2);
}
const activator = new DirectActivator(dir);
const handle = await activator.start(activator.plan({ deploymentId, role: "switch", path }));
process.stdout.write(`${JSON.stringify(handle)}\n`);
setInterval(() => {}, 1 << 30);
