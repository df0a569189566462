/** The narrow ports the deploy cycle's interpreter works through; the agent wires real ones. */
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Logger } from "../../common/logger.js";
import type { ReportHealthRequestSchema, ReportRequestSchema } from "../../gen/nixfleet/v1/agent_pb.js";
import type { Activator } from "../activation.js";
import type { HealthRunner } from "../health/runner.js";
import type { SwitchLockState } from "../host.js";
import type { Journal } from "../journal/journal.js";
import type { AgentMetrics } from "../metrics.js";

/** The Nix operations the cycle needs (nix.ts implements them). */
export interface NixOps {
  fetch(
    path: string,
    cacheUrl: string | null,
    options: { timeoutMs: number; signal?: AbortSignal },
  ): Promise<"cache" | "local">;
  setProfile(profile: string, path: string, options: { timeoutMs: number }): Promise<void>;
  switchProfileGeneration(profile: string, generation: number, options: { timeoutMs: number }): Promise<void>;
  addGcRoot(link: string, path: string, options: { timeoutMs: number }): Promise<void>;
}

/** What the cycle reads from the host (host.ts implements it). */
export interface HostOps {
  readCurrent(): string | null;
  readProfile(): string | null;
  profileGeneration(): number | null;
  profileGenerationPath(generation: number): string | null;
  switchScriptProblem(path: string): string | undefined;
  checkSwitchLock(): Promise<SwitchLockState>;
  /** The kernel's boot id (`/proc/sys/kernel/random/boot_id`); null when unreadable. */
  bootId(): string | null;
}

/** The health checks as the cycle uses them (health/runner.ts implements them). */
export type HealthPort = Pick<HealthRunner, "runAll" | "runDue" | "verify">;

export interface ReportSink {
  /** Queues a report on its own; `status` marks a steady-state one (coalesced). */
  report(init: MessageInitShape<typeof ReportRequestSchema>, options?: { status?: boolean }): unknown;
  health(init: MessageInitShape<typeof ReportHealthRequestSchema>): unknown;
  /** Rows were queued by a journal transaction: deliver them. */
  wake(): void;
}

export interface Ports {
  journal: Journal;
  nix: NixOps;
  host: HostOps;
  activator: Activator;
  health: HealthPort;
  reports: ReportSink;
  metrics: AgentMetrics;
  log: Logger;
  now: () => number;
}
