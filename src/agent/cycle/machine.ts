/**
 * The deploy cycle's transition function: (state, event) → (next state, effects). Pure. The
 * forward path, rollback and recovery live in their own modules; this one dispatches and holds
 * every transition to the table (table.ts) — a transition missing from the table is a bug, and
 * docs/agent.md is generated from the same rows.
 */

import { onChecked } from "./check.js";
import { forward } from "./forward.js";
import { rollback } from "./rollback.js";
import { observe } from "./steps.js";
import { rowKey, TRANSITION_KEYS } from "./table.js";
import type { Action, Effect, Event, Settings, State, Step } from "./types.js";

export class TransitionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TransitionError";
  }
}

const ACTIONS = new Set<string>([
  "persist",
  "fetch",
  "inspect",
  "gc-roots",
  "set-profile",
  "boot-default",
  "restore-profile",
  "plan-switch",
  "start-switch",
  "wait-switch",
  "stop-switch",
  "observe",
  "verify",
  "wait-lock",
  "health-report",
  "park",
]);

export function isAction(effect: Effect): effect is Action {
  return ACTIONS.has(effect.do);
}

/** The step's action (its last effect, if that is one); "—" when the step ends the cycle. */
export function actionOf(step: Step): string {
  const last = step.effects.at(-1);
  return last && isAction(last) ? last.do : "—";
}

function dispatch(state: State, event: Event, s: Settings): Step | undefined {
  switch (state.at) {
    case "check":
      return event.on === "checked" ? onChecked(event.facts, s) : undefined;
    case "health-report":
      return event.on === "ok" ? { state: { at: "done", verdict: "ok" }, effects: [] } : undefined;
    case "finish":
      if (event.on !== "persisted") return undefined;
      return {
        state: { at: "done", verdict: state.verdict },
        effects: [
          ...state.after,
          ...(state.park !== undefined ? [{ do: "park" as const, where: state.park }] : []),
        ],
      };
    case "done":
      return undefined;
    default:
      return forward(state, event, s) ?? rollback(state, event, s);
  }
}

export function transition(state: State, event: Event, s: Settings): Step {
  const step = dispatch(state, event, s);
  if (!step) throw new TransitionError(`no transition from ${state.at} on ${event.on}`);
  const actions = step.effects.filter(isAction);
  if (actions.length > 1 || (actions.length === 1 && step.effects.at(-1) !== actions[0]))
    throw new TransitionError(`${state.at} on ${event.on}: at most one action, and last`);
  const key = rowKey(state.at, event.on, step.state.at, actionOf(step));
  if (!TRANSITION_KEYS.has(key))
    throw new TransitionError(`transition ${key} is not in the table (cycle/table.ts)`);
  return step;
}

/** The first step of a recovery: look at the host. */
export function startRecovery(dep: import("../journal/journal.js").Deployment): Step {
  return { state: { at: "recover", dep }, effects: [observe(dep)] };
}

/** Whether the host may be changing: periodic health reports wait meanwhile. */
export function isBusy(state: State): boolean {
  return !["check", "health-report", "create", "fetch", "inspect", "done"].includes(state.at);
}
