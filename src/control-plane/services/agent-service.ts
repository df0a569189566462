/**
 * AgentService handlers. Every call first proves that the connection may act for the machine
 * it names (client certificate CN == machine_id), then hands the validated input to AgentIntake.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { Logger } from "../../common/logger.js";
import type {
  AgentMessage,
  AgentService,
  ControlMessageSchema,
  GetDesiredGenerationResponseSchema,
} from "../../gen/nixfleet/v1/agent_pb.js";
import { agentMachineDecision, peerKey } from "../auth/peer-identity.js";
import type { AgentConnection } from "../push/connection.js";
import { desiredChangedMessage, type PushHub } from "../push/hub.js";
import { checkMachineId, healthFromProto, helloFromProto, reportFromProto } from "./agent-input.js";
import type { AgentIntake } from "./agent-intake.js";
import { desiredToProto } from "./convert.js";
import { toConnectError } from "./errors.js";

export interface AgentServiceOptions {
  intake: AgentIntake;
  hub: PushHub;
  logger: Logger;
  allowInsecure: boolean;
  /** How long a new Session may take to send Hello. */
  helloTimeoutMs: number;
}

type ControlInit = MessageInitShape<typeof ControlMessageSchema>;

function authorize(ctx: HandlerContext, machineId: string, allowInsecure: boolean): void {
  checkMachineIdOrThrow(machineId);
  const decision = agentMachineDecision(ctx.values.get(peerKey), machineId, allowInsecure);
  if (!decision.ok) throw new ConnectError(decision.message, decision.code);
}

function checkMachineIdOrThrow(machineId: string): void {
  try {
    checkMachineId(machineId);
  } catch (err) {
    throw toConnectError(err);
  }
}

/** Runs a handler body, mapping domain errors to Connect codes and logging the unexpected. */
async function guarded<T>(logger: Logger, what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const mapped = toConnectError(err);
    if (mapped.code === Code.Internal) logger.error({ err }, `${what} failed`);
    throw mapped;
  }
}

async function firstMessage(
  iterator: AsyncIterator<AgentMessage>,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<IteratorResult<AgentMessage>> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new ConnectError(
            `no Hello within ${Math.round(timeoutMs / 1000)} s of opening the Session`,
            Code.DeadlineExceeded,
          ),
        ),
      timeoutMs,
    );
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

  async function initialMessage(machineId: string): Promise<ControlInit> {
    const answer = await intake.desired(machineId);
    return desiredChangedMessage({ machineId, desired: answer.desired }, answer.pollHintSeconds);
  }

  /** Handles one message that arrived on a Session after Hello. */
  async function onSessionMessage(conn: AgentConnection, msg: AgentMessage): Promise<void> {
    const body = msg.message;
    switch (body.case) {
      case "heartbeat":
        // The agent's own interval sizes its timeout, within reason (at most an hour).
        if (body.value.intervalSeconds > 0)
          conn.peerIntervalMs = Math.min(body.value.intervalSeconds, 3600) * 1000;
        return;
      case "ack":
        hub.acknowledge(conn, Number(body.value.revision));
        return;
      case "report": {
        if (body.value.machineId === "") body.value.machineId = conn.machineId;
        if (body.value.machineId !== conn.machineId)
          throw new ConnectError(
            `report.machine_id ${body.value.machineId} is not this session's machine ${conn.machineId}`,
            Code.PermissionDenied,
          );
        await intake.report(reportFromProto(body.value));
        return;
      }
      case "health": {
        if (body.value.machineId === "") body.value.machineId = conn.machineId;
        if (body.value.machineId !== conn.machineId)
          throw new ConnectError(
            `health.machine_id ${body.value.machineId} is not this session's machine ${conn.machineId}`,
            Code.PermissionDenied,
          );
        await intake.health(healthFromProto(body.value));
        return;
      }
      case "hello":
        throw new ConnectError(
          "Hello may only be sent once, as the first Session message",
          Code.InvalidArgument,
        );
      default:
        throw new ConnectError(
          "empty AgentMessage (set one of hello, heartbeat, report, health, ack)",
          Code.InvalidArgument,
        );
    }
  }

  return {
    async getDesiredGeneration(
      req,
      ctx,
    ): Promise<MessageInitShape<typeof GetDesiredGenerationResponseSchema>> {
      authorize(ctx, req.machineId, allowInsecure);
      return guarded(logger, "GetDesiredGeneration", async () => {
        const answer = await intake.desired(req.machineId);
        return {
          ...(answer.desired ? { generation: desiredToProto(answer.desired) } : {}),
          ...(answer.pollHintSeconds !== undefined ? { pollHintSeconds: answer.pollHintSeconds } : {}),
        };
      });
    },

    async report(req, ctx) {
      authorize(ctx, req.machineId, allowInsecure);
      return guarded(logger, "Report", async () => {
        await intake.report(reportFromProto(req));
        return {};
      });
    },

    async reportHealth(req, ctx) {
      authorize(ctx, req.machineId, allowInsecure);
      return guarded(logger, "ReportHealth", async () => {
        await intake.health(healthFromProto(req));
        return {};
      });
    },

    async *session(requests, ctx) {
      const iterator = requests[Symbol.asyncIterator]();
      const first = await firstMessage(iterator, o.helloTimeoutMs, ctx.signal);
      if (first.done) return;
      if (first.value.message.case !== "hello")
        throw new ConnectError("the first Session message must be Hello", Code.InvalidArgument);
      const hello = first.value.message.value;
      authorize(ctx, hello.machineId, allowInsecure);
      await guarded(logger, "Session Hello", async () => intake.hello(helloFromProto(hello)));
      const conn = hub.attach(hello.machineId, "session");
      try {
        conn.sendInitial(await guarded(logger, "Session", () => initialMessage(hello.machineId)));
        // Read the agent's messages concurrently with writing ours; the first error ends the stream.
        void (async () => {
          for (;;) {
            const next = await iterator.next();
            if (next.done || conn.closed) break;
            hub.heard(conn);
            intake.heard(conn.machineId);
            await onSessionMessage(conn, next.value);
          }
          conn.close();
        })().catch((err) => {
          const mapped = toConnectError(err);
          if (mapped.code === Code.Internal)
            logger.error({ err, machineId: conn.machineId }, "Session message failed");
          conn.close(mapped.code === Code.Canceled ? null : mapped);
        });
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
