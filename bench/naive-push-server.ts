/**
 * The naive connect-node baseline: the same Session RPC through connectNodeAdapter with a trivial
 * handler (no auth, database, hub or metrics) — one async generator per stream yielding what a
 * per-stream queue holds. What Connect itself costs per pushed message.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { AgentService, type ControlMessageSchema } from "../src/gen/nixfleet/v1/agent_pb.js";
import { listen } from "./push-server-common.js";

type Msg = MessageInitShape<typeof ControlMessageSchema>;

class Queue {
  items: Msg[] = [];
  wake: (() => void) | null = null;
  push(m: Msg) {
    this.items.push(m);
    this.wake?.();
  }
}
const queues = new Set<Queue>();

const handler = connectNodeAdapter({
  routes: (router) =>
    router.service(AgentService, {
      async *session(requests, ctx) {
        const it = requests[Symbol.asyncIterator]();
        const first = await it.next();
        if (first.done) return;
        const q = new Queue();
        queues.add(q);
        void (async () => {
          while (!(await it.next()).done) {}
        })().catch(() => {});
        ctx.signal.addEventListener("abort", () => q.wake?.(), { once: true });
        try {
          yield { message: { case: "desiredGenerationChanged", value: { generation: { hash: "" } } } };
          while (!ctx.signal.aborted) {
            const next = q.items.shift();
            if (next) {
              yield next;
              continue;
            }
            await new Promise<void>((r) => {
              q.wake = r;
            });
            q.wake = null;
          }
        } finally {
          queues.delete(q);
        }
      },
    }),
});

listen(
  (req, res) => handler(req, res),
  (hash) => {
    for (const q of queues)
      q.push({ message: { case: "desiredGenerationChanged", value: { generation: { hash } } } });
  },
  () => {
    for (const q of queues) q.push({ message: { case: "heartbeat", value: { intervalSeconds: 10 } } });
  },
);
