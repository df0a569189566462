/**
 * What a Session does, whichever transport carries it: Connect (the Connect and gRPC-web
 * protocols, in agent-service.ts) or the raw gRPC path (http/grpc-session.ts). Hello names the
 * machine, which the connection's certificate must match; then heartbeats, acks, reports and
 * health reports arrive, any of them proving the agent alive.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../../common/logger.js";
import type { AgentMessage } from "../../gen/nixfleet/v1/agent_pb.js";
import { agentMachineDecision, type PeerIdentity } from "../auth/peer-identity.js";
import type { AgentConnection } from "../push/connection.js";
import { desiredChangedMessage, type PushHub } from "../push/hub.js";
import { OutgoingMessage } from "../push/outgoing.js";
import { checkMachineId, healthFromProto, helloFromProto, reportFromProto } from "./agent-input.js";
import type { AgentIntake } from "./agent-intake.js";
import { toConnectError } from "./errors.js";

export interface AgentSessionOptions {
  intake: AgentIntake;
  hub: PushHub;
  logger: Logger;
  allowInsecure: boolean;
}

/** Throws unless the connection may act for `machineId` (and it is well-formed). */
export function authorizeMachine(peer: PeerIdentity, machineId: string, allowInsecure: boolean): void {
  try {
    checkMachineId(machineId);
  } catch (err) {
    throw toConnectError(err);
  }
  const decision = agentMachineDecision(peer, machineId, allowInsecure);
  if (!decision.ok) throw new ConnectError(decision.message, decision.code);
}

/** Runs a handler body, mapping domain errors to Connect codes and logging the unexpected. */
export async function guarded<T>(logger: Logger, what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const mapped = toConnectError(err);
    if (mapped.code === Code.Internal) logger.error({ err }, `${what} failed`);
    throw mapped;
  }
}

/** The error a Session ends with when no Hello arrived in time (both transports). */
export function helloTimeoutError(timeoutMs: number): ConnectError {
  return new ConnectError(
    `no Hello within ${Math.round(timeoutMs / 1000)} s of opening the Session`,
    Code.DeadlineExceeded,
  );
}

export class AgentSessions {
  constructor(private readonly o: AgentSessionOptions) {}

  /** Checks the first message (Hello, for the connection's own machine) and records it; its machine id. */
  async hello(peer: PeerIdentity, first: AgentMessage): Promise<string> {
    if (first.message.case !== "hello")
      throw new ConnectError("the first Session message must be Hello", Code.InvalidArgument);
    const hello = first.message.value;
    authorizeMachine(peer, hello.machineId, this.o.allowInsecure);
    await guarded(this.o.logger, "Session Hello", () => this.o.intake.hello(helloFromProto(hello)));
    return hello.machineId;
  }

  /** The machine's current assignment, sent right after Hello. */
  async initial(machineId: string): Promise<OutgoingMessage> {
    const answer = await guarded(this.o.logger, "Session", () => this.o.intake.desired(machineId));
    return new OutgoingMessage(
      desiredChangedMessage({ machineId, desired: answer.desired }, answer.pollHintSeconds),
    );
  }

  /**
   * Handles one message after Hello. Heartbeats and acks are handled at once (no promise); a
   * report returns the promise of its write, which the caller awaits before reading on.
   */
  message(conn: AgentConnection, msg: AgentMessage): Promise<void> | undefined {
    this.o.hub.heard(conn);
    this.o.intake.heard(conn.machineId);
    const body = msg.message;
    switch (body.case) {
      case "heartbeat":
        // The agent's own interval sizes its timeout, within reason (at most an hour).
        if (body.value.intervalSeconds > 0)
          conn.peerIntervalMs = Math.min(body.value.intervalSeconds, 3600) * 1000;
        return undefined;
      case "ack":
        this.o.hub.acknowledge(conn, Number(body.value.revision));
        return undefined;
      case "report":
        sessionMachine("report", body.value, conn.machineId);
        return this.o.intake.report(reportFromProto(body.value)).then(() => undefined);
      case "health":
        sessionMachine("health", body.value, conn.machineId);
        return this.o.intake.health(healthFromProto(body.value)).then(() => undefined);
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

  /** How a failed Session message ends the stream: mapped, and logged when unexpected. */
  failure(conn: AgentConnection, err: unknown): ConnectError | null {
    const mapped = toConnectError(err);
    if (mapped.code === Code.Internal)
      this.o.logger.error({ err, machineId: conn.machineId }, "Session message failed");
    return mapped.code === Code.Canceled ? null : mapped;
  }
}

/** A report or health report on a Session is for the session's machine (an empty id means it). */
function sessionMachine(field: string, message: { machineId: string }, machineId: string): void {
  if (message.machineId === "") message.machineId = machineId;
  if (message.machineId !== machineId)
    throw new ConnectError(
      `${field}.machine_id ${message.machineId} is not this session's machine ${machineId}`,
      Code.PermissionDenied,
    );
}
