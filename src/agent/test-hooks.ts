/**
 * Test-only: kill the agent (SIGKILL, by itself) right after a chosen journal write, so a test
 * can stop a real agent process at an exact point of the deploy cycle — e.g. just after an
 * outcome committed, or between a rollback switch and the outcome that quarantines it.
 *
 * NIXFLEET_TEST_KILL_AFTER=<state>[:<outcome>] names the cycle state a write leads to
 * (cycle/table.ts) and optionally the outcome the deployment then has. Unset in production: the
 * hook is not even installed.
 */
import type { Logger } from "../common/logger.js";
import type { State } from "./cycle/types.js";
import type { Deployment } from "./journal/journal.js";

export const KILL_AFTER_ENV = "NIXFLEET_TEST_KILL_AFTER";

export function killAfterHook(
  value: string | undefined,
  log: Logger,
): ((state: State, dep: Deployment) => void) | undefined {
  if (!value) return undefined;
  const [at, outcome] = value.split(":");
  log.warn(
    { event: "test_hook", at, outcome },
    `${KILL_AFTER_ENV} is set: the agent kills itself at that point`,
  );
  return (state, dep) => {
    if (state.at !== at || (outcome !== undefined && dep.outcome !== outcome)) return;
    log.warn(
      { event: "test_kill", at, deploymentId: dep.id, outcome: dep.outcome },
      "killing myself (test hook)",
    );
    log.flush?.();
    process.kill(process.pid, "SIGKILL");
  };
}
