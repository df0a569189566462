/**
 * Machine lifecycle rules: pending → active ⇄ maintenance → decommissioned, pending may also be
 * retired directly, and decommissioned is terminal. Only ACTIVE machines are picked by new
 * rollouts; lifecycle never stops a machine from receiving what is already assigned to it.
 */
import type { Lifecycle } from "../store/records.js";

export const LIFECYCLES: readonly Lifecycle[] = ["pending", "active", "maintenance", "decommissioned"];

const ALLOWED: Record<Lifecycle, readonly Lifecycle[]> = {
  pending: ["active", "decommissioned"],
  active: ["maintenance", "decommissioned"],
  maintenance: ["active", "decommissioned"],
  decommissioned: [],
};

/** Why `from → to` is not allowed, or undefined when it is (a no-op `from → from` is allowed). */
export function lifecycleTransitionProblem(from: Lifecycle, to: Lifecycle): string | undefined {
  if (from === to) return undefined;
  if (ALLOWED[from].includes(to)) return undefined;
  if (from === "decommissioned") return "a decommissioned machine cannot change lifecycle (it is terminal)";
  const allowed = ALLOWED[from];
  return `cannot move a machine from ${from} to ${to}; from ${from} it can go to ${allowed.join(" or ")}`;
}

/** What a report from the agent does to the lifecycle: a pre-registered machine becomes active. */
export function lifecycleAfterContact(current: Lifecycle): Lifecycle {
  return current === "pending" ? "active" : current;
}
