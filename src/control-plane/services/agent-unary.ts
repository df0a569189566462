/**
 * The agent's unary RPCs (GetDesiredGeneration, Report, ReportHealth) as plain functions of the
 * caller's peer identity and the decoded request: one implementation of authorization,
 * validation and storage, called by the Connect service (agent-service.ts: Connect, Connect JSON,
 * gRPC-web, gRPC+json) and by the raw gRPC path (http/grpc-unary.ts: what agents speak).
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Logger } from "../../common/logger.js";
import type {
  GetDesiredGenerationRequest,
  GetDesiredGenerationResponseSchema,
  ReportHealthRequest,
  ReportHealthResponseSchema,
  ReportRequest,
  ReportResponseSchema,
} from "../../gen/nixfleet/v1/agent_pb.js";
import type { PeerIdentity } from "../auth/peer-identity.js";
import { healthFromProto, reportFromProto } from "./agent-input.js";
import type { AgentIntake } from "./agent-intake.js";
import { authorizeMachine, guarded } from "./agent-session.js";
import { desiredToProto } from "./convert.js";

export interface AgentUnaryOptions {
  intake: AgentIntake;
  logger: Logger;
  allowInsecure: boolean;
}

const EMPTY = {};

export class AgentUnary {
  constructor(private readonly o: AgentUnaryOptions) {}

  async getDesiredGeneration(
    peer: PeerIdentity,
    req: GetDesiredGenerationRequest,
  ): Promise<MessageInitShape<typeof GetDesiredGenerationResponseSchema>> {
    authorizeMachine(peer, req.machineId, this.o.allowInsecure);
    return guarded(this.o.logger, "GetDesiredGeneration", async () => {
      const answer = await this.o.intake.desired(req.machineId);
      return {
        ...(answer.desired ? { generation: desiredToProto(answer.desired) } : {}),
        ...(answer.pollHintSeconds !== undefined ? { pollHintSeconds: answer.pollHintSeconds } : {}),
      };
    });
  }

  async report(
    peer: PeerIdentity,
    req: ReportRequest,
  ): Promise<MessageInitShape<typeof ReportResponseSchema>> {
    authorizeMachine(peer, req.machineId, this.o.allowInsecure);
    return guarded(this.o.logger, "Report", async () => {
      await this.o.intake.report(reportFromProto(req));
      return EMPTY;
    });
  }

  async reportHealth(
    peer: PeerIdentity,
    req: ReportHealthRequest,
  ): Promise<MessageInitShape<typeof ReportHealthResponseSchema>> {
    authorizeMachine(peer, req.machineId, this.o.allowInsecure);
    return guarded(this.o.logger, "ReportHealth", async () => {
      await this.o.intake.health(healthFromProto(req));
      return EMPTY;
    });
  }
}
