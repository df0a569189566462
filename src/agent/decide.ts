/**
 * The check step's decision and the quarantine rules, as pure functions.
 *
 * Quarantine (types.proto, DesiredGeneration.revision): a path that failed here is remembered
 * with the revision of the assignment that failed. The same path with a revision ≤ that one is
 * not tried again (no rollback thrash, peer study §4 #13); a newer revision — a new rollout, a
 * resumed batch, an explicit SetDesiredGeneration — is the control plane asking again, so the
 * quarantine is lifted and the path is tried.
 */
import { storePathProblem } from "../common/store-path.js";
import { cacheUrlProblem } from "./cache-url.js";
import type { QuarantineEntry } from "./journal/journal.js";

/** A desired generation as the agent acts on it. */
export interface Desired {
  path: string;
  /** Empty: the agent's own cacheUrl (or a path already present). */
  cacheUrl: string;
  revision: bigint;
  rolloutId: string;
}

export type CheckDecision =
  /** Nothing assigned: idle, not an error. */
  | { kind: "idle" }
  /** The control plane sent something the agent must not act on. */
  | { kind: "invalid"; reason: string }
  | { kind: "up-to-date" }
  | { kind: "quarantined"; entry: QuarantineEntry }
  /**
   * This exact assignment (path and revision) was deployed here, yet the host now runs
   * something else: someone switched it by hand, or it booted another generation. Reported as
   * FOREIGN_GENERATION, not fought — an operator's emergency rollback must stick until the
   * control plane assigns the generation again (a newer revision).
   */
  | { kind: "drifted" }
  | { kind: "deploy"; liftQuarantine?: QuarantineEntry };

export interface CheckInput {
  desired: Desired | undefined;
  /** Where current-system points (null: the link is missing). */
  current: string | null;
  quarantine: QuarantineEntry | undefined;
  /** Whether the journal holds a DEPLOYED deployment of exactly this path and revision. */
  deployedBefore: boolean;
}

/** Whether a quarantine entry still blocks an assignment with this revision. */
export function blocksRevision(entry: QuarantineEntry | undefined, revision: bigint): boolean {
  return entry !== undefined && revision <= entry.revision;
}

/** Validates what the control plane sent; returns the reason it must be refused. */
export function desiredProblem(desired: Desired): string | undefined {
  const pathProblem = storePathProblem(desired.path);
  if (pathProblem) {
    return `refused the desired generation ${JSON.stringify(desired.path.slice(0, 200))}: ${pathProblem}`;
  }
  if (desired.cacheUrl) {
    const cacheProblem = cacheUrlProblem(desired.cacheUrl, { fromControlPlane: true });
    if (cacheProblem) {
      return `refused the cache URL ${JSON.stringify(desired.cacheUrl.slice(0, 200))} sent for ${desired.path}: ${cacheProblem}`;
    }
  }
  return undefined;
}

export function decideCheck(input: CheckInput): CheckDecision {
  const { desired, current, quarantine } = input;
  if (desired === undefined) return { kind: "idle" };
  const problem = desiredProblem(desired);
  if (problem) return { kind: "invalid", reason: problem };
  // Generations compare as whole strings, never a hash prefix (v0.2 bug e85b872).
  if (current === desired.path) return { kind: "up-to-date" };
  if (input.deployedBefore) return { kind: "drifted" };
  if (quarantine && blocksRevision(quarantine, desired.revision))
    return { kind: "quarantined", entry: quarantine };
  return quarantine ? { kind: "deploy", liftQuarantine: quarantine } : { kind: "deploy" };
}

/**
 * Steady-state reports (UP_TO_DATE, QUARANTINED, idle) go out when what they say changes, and
 * otherwise at most every `intervalMs` — not on every poll tick.
 */
export function shouldSendSteadyReport(
  last: { key: string; sentAt: number } | undefined,
  key: string,
  now: number,
  intervalMs: number,
): boolean {
  return last === undefined || last.key !== key || now - last.sentAt >= intervalMs;
}

/** The identity of a steady report: a change in any part is news for the control plane. */
export function steadyReportKey(parts: {
  outcome: string;
  desired: string;
  revision: bigint;
  current: string | null;
}): string {
  return [parts.outcome, parts.desired, parts.revision.toString(), parts.current ?? ""].join("|");
}
