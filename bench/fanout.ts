/**
 * Push fan-out client (a child of bench/run.ts): opens one Session stream per machine id against
 * an --allow-insecure control plane (so one process can speak for many machines), says Hello,
 * prints "ready" once every stream has its initial assignment, then prints, for the next
 * DesiredGenerationChanged on every stream, the wall-clock time it arrived: {"received": [ms…]}.
 */
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { type AgentMessage, AgentMessageSchema, AgentService } from "../src/gen/nixfleet/v1/agent_pb.js";

const [url, prefix, countArg] = process.argv.slice(2) as [string, string, string];
const count = Number(countArg);
const client = createClient(AgentService, createGrpcTransport({ baseUrl: url }));
const received: number[] = [];
let ready = 0;

/** A request stream that says Hello, then stays open (heartbeats) until the process ends. */
async function* outgoing(machineId: string): AsyncGenerator<AgentMessage> {
  yield create(AgentMessageSchema, { message: { case: "hello", value: { machineId, tags: [prefix] } } });
  for (;;) {
    await new Promise((r) => setTimeout(r, 10_000));
    yield create(AgentMessageSchema, { message: { case: "heartbeat", value: { intervalSeconds: 10 } } });
  }
}

async function stream(machineId: string): Promise<void> {
  let seenInitial = false;
  for await (const msg of client.session(outgoing(machineId))) {
    if (msg.message.case !== "desiredGenerationChanged") continue;
    if (!seenInitial) {
      seenInitial = true;
      ready += 1;
      if (ready === count) process.stdout.write("ready\n");
      continue;
    }
    received.push(Date.now());
    if (received.length === count) {
      process.stdout.write(`${JSON.stringify({ received })}\n`);
      process.exit(0);
    }
    return;
  }
}

for (let i = 0; i < count; i++)
  void stream(`${prefix}-${String(i).padStart(5, "0")}`).catch((err: Error) => {
    process.stderr.write(`stream ${i}: ${err.message}\n`);
    process.exit(1);
  });
