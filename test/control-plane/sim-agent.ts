/**
 * A simulated agent for rollout tests: test code that speaks AgentService through a real
 * client with the machine's own certificate, and reports what a real agent would after doing
 * (or failing) the work. The real agent is tested in its own suites.
 */
import type { Client } from "@connectrpc/connect";
import type { AgentService } from "../../src/gen/nixfleet/v1/agent_pb.js";
import { HealthCheckKind, Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import type { Harness, Protocol } from "./harness.js";

export class SimAgent {
  readonly client: Client<typeof AgentService>;

  constructor(
    readonly id: string,
    public current: string,
    readonly tags: string[],
    h: Harness,
    protocol: Protocol = "grpc",
  ) {
    this.client = h.agent(id, { protocol });
  }

  async register(): Promise<void> {
    await this.client.report({
      machineId: this.id,
      currentGeneration: this.current,
      outcome: Outcome.UP_TO_DATE,
      success: true,
      tags: this.tags,
    });
  }

  async desired() {
    return this.client.getDesiredGeneration({ machineId: this.id });
  }

  async desiredPath(): Promise<string | undefined> {
    return (await this.desired()).generation?.hash;
  }

  /** Switches to `target` (default: what is assigned), reports DEPLOYED and a passing post-apply health report. */
  async deploy(target?: string): Promise<string> {
    const desired = await this.desired();
    const path = target ?? desired.generation?.hash;
    if (!path) throw new Error(`${this.id}: nothing to deploy`);
    const revision = desired.generation?.revision ?? 0n;
    await this.client.report({
      machineId: this.id,
      currentGeneration: this.current,
      desiredGeneration: path,
      desiredRevision: revision,
      outcome: Outcome.APPLYING,
      success: true,
      deploymentId: `d-${this.id}`,
    });
    this.current = path;
    await this.client.report({
      machineId: this.id,
      currentGeneration: path,
      desiredGeneration: path,
      desiredRevision: revision,
      outcome: Outcome.DEPLOYED,
      success: true,
      deploymentId: `d-${this.id}`,
      tags: this.tags,
    });
    await this.health(true, { postApply: true });
    return path;
  }

  async health(passed: boolean, options: { generation?: string; postApply?: boolean } = {}): Promise<void> {
    await this.client.reportHealth({
      machineId: this.id,
      currentGeneration: options.generation ?? this.current,
      allPassed: passed,
      postApply: options.postApply ?? false,
      results: [
        {
          name: "nginx.service",
          kind: HealthCheckKind.SYSTEMD,
          passed,
          durationMs: 3,
          message: passed ? "" : "inactive",
        },
      ],
    });
  }

  /** The switch or its verification failed and the agent went back to what it ran. */
  async rollBack(message = "health check nginx.service failed"): Promise<void> {
    const desired = await this.desired();
    await this.client.report({
      machineId: this.id,
      currentGeneration: this.current,
      desiredGeneration: desired.generation?.hash ?? "",
      desiredRevision: desired.generation?.revision ?? 0n,
      outcome: Outcome.ROLLED_BACK,
      success: false,
      message: `rolled back: ${message}`,
    });
  }
}
