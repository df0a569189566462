/**
 * AgentService handlers. Every call first proves that the connection may act for the machine
 * it names (client certificate CN == machine_id), then hands the validated input to AgentIntake.
 */
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { Logger } from "../../common/logger.js";
import type { AgentMessage, AgentService } from "../../gen/nixfleet/v1/agent_pb.js";
import { peerKey } from "../auth/peer-identity.js";
import { desiredChangedMessage, type PushHub } from "../push/hub.js";
import { helloFromProto } from "./agent-input.js";
import type { AgentIntake } from "./agent-intake.js";
import { AgentSessions, authorizeMachine, guarded, helloTimeoutError } from "./agent-session.js";
import { AgentUnary } from "./agent-unary.js";

export interface AgentServiceOptions {
  intake: AgentIntake;
  hub: PushHub;
  logger: Logger;
  allowInsecure: boolean;
  /** How long a new Session may take to send Hello. */
  helloTimeoutMs: number;
}

function authorize(ctx: HandlerContext, machineId: string, allowInsecure: boolean): void {
  authorizeMachine(ctx.values.get(peerKey), machineId, allowInsecure);
}

async function firstMessage(
  iterator: AsyncIterator<AgentMessage>,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<IteratorResult<AgentMessage>> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(helloTimeoutError(timeoutMs)), timeoutMs);
  });
  const aborted = new Promise<never>((_, reject) => {
    signal.addEventListener("abort", () => reject(new ConnectError("client went away", Code.Canceled)), {
      once: true,
    });
  });
  try {
    return await Promise.race([iterator.next(), timeout, aborted]);
  } finally {
    clearTimeout(timer);
  }
}

export function agentServiceImpl(o: AgentServiceOptions): Partial<ServiceImpl<typeof AgentService>> {
  const { intake, hub, logger, allowInsecure } = o;

  const sessions = new AgentSessions({ intake, hub, logger, allowInsecure });
  const unary = new AgentUnary({ intake, logger, allowInsecure });

  async function initialMessage(machineId: string) {
    const answer = await intake.desired(machineId);
    return desiredChangedMessage({ machineId, desired: answer.desired }, answer.pollHintSeconds);
  }

  return {
    // The gRPC protocol of these (what agents speak) is served by http/grpc-unary.ts without
    // Connect; both call the same AgentUnary.
    getDesiredGeneration: (req, ctx) => unary.getDesiredGeneration(ctx.values.get(peerKey), req),
    report: (req, ctx) => unary.report(ctx.values.get(peerKey), req),
    reportHealth: (req, ctx) => unary.reportHealth(ctx.values.get(peerKey), req),

    // The gRPC protocol of Session (what agents speak) is served by http/grpc-session.ts without
    // Connect; this serves the Connect and gRPC-web protocols, with the same AgentSessions logic.
    async *session(requests, ctx) {
      const iterator = requests[Symbol.asyncIterator]();
      const first = await firstMessage(iterator, o.helloTimeoutMs, ctx.signal);
      if (first.done) return;
      const machineId = await sessions.hello(ctx.values.get(peerKey), first.value);
      const conn = hub.attach(machineId, "session");
      try {
        conn.sendInitial(await sessions.initial(machineId));
        // Read the agent's messages concurrently with writing ours; the first error ends the stream.
        void (async () => {
          for (;;) {
            const next = await iterator.next();
            if (next.done || conn.closed) break;
            await sessions.message(conn, next.value);
          }
          conn.close();
        })().catch((err) => conn.close(sessions.failure(conn, err)));
        yield* conn.outgoing(ctx.signal);
        if (conn.error) throw conn.error;
      } finally {
        hub.detach(conn);
      }
    },

    async *watch(req, ctx) {
      authorize(ctx, req.machineId, allowInsecure);
      await guarded(logger, "Watch", async () => intake.hello(helloFromProto(req)));
      const conn = hub.attach(req.machineId, "watch");
      try {
        conn.sendInitial(await guarded(logger, "Watch", () => initialMessage(req.machineId)));
        yield* conn.outgoing(ctx.signal);
        if (conn.error) throw conn.error;
      } finally {
        hub.detach(conn);
      }
    },
  };
}
