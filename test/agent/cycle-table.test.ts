/**
 * The deploy cycle's transition table, row by row: each case drives the pure transition function
 * from one state with one event and checks where it goes and which action it asks for. Every row
 * of cycle/table.ts must be exercised here, and docs/agent.md must carry the table as rendered.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import type { ActivationHandle } from "../../src/agent/activation.js";
import { actionOf, TransitionError, transition } from "../../src/agent/cycle/machine.js";
import { renderTable, rowKey, TABLE } from "../../src/agent/cycle/table.js";
import type {
  CheckFacts,
  Effect,
  Event,
  Observation,
  RollbackProgress,
  Settings,
  State,
  StateName,
} from "../../src/agent/cycle/types.js";
import type { Deployment } from "../../src/agent/journal/journal.js";
import { GEN1, GEN2, GEN3 } from "./harness/fake-host.js";

const S: Settings = {
  dryRun: false,
  cacheUrl: null,
  healthIntervalMs: 60_000,
  verifyTimeoutSeconds: 1,
  activationTimeoutSeconds: 5,
  maxRollbackAttempts: 2,
  currentSystemPath: "/run/current-system",
  activationOrder: "switch",
};

const handle = (role = "switch", path = GEN2): ActivationHandle => ({
  mode: "direct",
  role,
  path,
  statusFile: "s",
  logFile: "l",
  startedAt: 0,
});

function dep(over: Partial<Deployment> = {}): Deployment {
  return {
    id: "d1",
    desired: GEN2,
    desiredRevision: 3n,
    rolloutId: "",
    cacheUrl: null,
    previous: GEN1,
    previousProfileGeneration: 1,
    phase: "applying",
    outcome: null,
    message: null,
    activation: handle(),
    rollbackActivation: handle("rollback-1", GEN1),
    rollbackReason: null,
    rollbackAttempts: 0,
    activationOrder: "switch",
    bootId: "boot-1",
    bootDefaultMoved: false,
    createdAt: 0,
    updatedAt: 0,
    finishedAt: null,
    ...over,
  };
}

const D = dep();
/** The confirm order (the default): `test`, verify, then profile + `boot`. */
const C = dep({ activationOrder: "confirm" });
const commit = { snapshot: { allPassed: true, results: [] } };
const desired = { path: GEN2, cacheUrl: "", revision: 3n, rolloutId: "" };
const rb: RollbackProgress = { reason: "switch-to-configuration exited with code 1", why: "exit 1" };
const snap = (passed: boolean) => ({
  allPassed: passed,
  results: [{ name: "m", kind: "command" as const, passed, message: "", durationMs: 1, at: 0 }],
});
const observed = (current: string | null, o: Partial<Observation> = {}): Event => ({
  on: "observed",
  facts: {
    current,
    bootId: "boot-1",
    profile: GEN1,
    forward: { state: "not-started" },
    rollback: { state: "not-started" },
    ...o,
  },
});
const checked = (f: Partial<CheckFacts>): Event => ({
  on: "checked",
  facts: {
    desired,
    current: GEN1,
    decision: { kind: "deploy" },
    alarm: undefined,
    lastSteady: undefined,
    now: 0,
    newId: "d1",
    ...f,
  },
});
const inspected = (f: Partial<Extract<Event, { on: "inspected" }>["facts"]> = {}): Event => ({
  on: "inspected",
  facts: {
    desiredProblem: undefined,
    previous: GEN1,
    previousProblem: undefined,
    lockHolder: undefined,
    profileGeneration: 1,
    bootId: "boot-1",
    ...f,
  },
});
const exhausted = dep({ rollbackAttempts: 2 });
const ended = (code: number): Event => ({ on: "switch-ended", end: { kind: "exited", code }, tail: "" });

/** [from-state, event, expected next state, expected action, settings override] */
type Case = [State, Event, StateName, string, Partial<Settings>?];

const CASES: Case[] = [
  [{ at: "check" }, checked({ desired: undefined, decision: { kind: "idle" } }), "done", "—"],
  [
    { at: "check" },
    checked({ current: GEN2, decision: { kind: "up-to-date" } }),
    "health-report",
    "health-report",
  ],
  [{ at: "check" }, checked({}), "create", "persist"],
  [{ at: "health-report" }, { on: "ok" }, "done", "—"],
  [
    { at: "create", desired, current: GEN1 },
    { on: "persisted", dep: dep({ phase: "fetching" }) },
    "fetch",
    "fetch",
  ],
  [{ at: "fetch", dep: D }, { on: "fetched", source: "cache" }, "inspect", "inspect"],
  [{ at: "fetch", dep: D }, { on: "fetch-failed", message: "gone" }, "finish", "persist"],
  [{ at: "fetch", dep: D }, { on: "fetch-stopped" }, "finish", "persist"],
  [{ at: "inspect", dep: D, source: "cache" }, inspected({ lockHolder: "pid 7" }), "finish", "persist"],
  [{ at: "inspect", dep: D, source: "cache" }, inspected(), "begin-apply", "persist"],
  [{ at: "begin-apply", dep: D }, { on: "persisted", dep: D }, "gc-roots", "gc-roots"],
  [{ at: "gc-roots", dep: D }, { on: "ok" }, "set-profile", "set-profile"],
  [{ at: "gc-roots", dep: D }, { on: "failed", message: "x" }, "finish", "persist"],
  [{ at: "gc-roots", dep: C }, { on: "ok" }, "plan-switch", "plan-switch"],
  [{ at: "set-profile", dep: D }, { on: "ok" }, "plan-switch", "plan-switch"],
  [{ at: "set-profile", dep: D }, { on: "failed", message: "disk full" }, "unapply", "restore-profile"],
  [{ at: "unapply", dep: D, message: "m" }, { on: "ok" }, "finish", "persist"],
  [{ at: "unapply", dep: D, message: "m" }, { on: "failed", message: "x" }, "finish", "persist"],
  [{ at: "plan-switch", dep: D }, { on: "planned", handle: handle() }, "switch-planned", "persist"],
  [{ at: "switch-planned", dep: D }, { on: "persisted", dep: D }, "start-switch", "start-switch"],
  [{ at: "start-switch", dep: D }, { on: "started", handle: handle() }, "switch-recorded", "persist"],
  [
    { at: "start-switch", dep: D },
    { on: "start-failed", message: "x", status: { state: "vanished" } },
    "unapply",
    "restore-profile",
  ],
  [
    { at: "start-switch", dep: D },
    { on: "start-failed", message: "x", status: { state: "running" } },
    "switch",
    "wait-switch",
  ],
  [{ at: "switch-recorded", dep: D }, { on: "persisted", dep: D }, "switch", "wait-switch"],
  [{ at: "switch", dep: D, handle: handle() }, ended(4), "verify-persisted", "persist"],
  [
    { at: "switch", dep: D, handle: handle() },
    { on: "switch-ended", end: { kind: "timeout" }, tail: "" },
    "timeout-persisted",
    "persist",
  ],
  [{ at: "switch", dep: D, handle: handle() }, ended(1), "rb-persisted", "persist"],
  [{ at: "switch", dep: dep({ previous: null }), handle: handle() }, ended(1), "rb-fail-observe", "observe"],
  [
    { at: "timeout-persisted", dep: D, handle: handle() },
    { on: "persisted", dep: D },
    "kill-switch",
    "stop-switch",
  ],
  [{ at: "kill-switch", dep: D }, { on: "switch-stopped", tail: "" }, "rb-persisted", "persist"],
  [{ at: "kill-switch", dep: exhausted }, { on: "switch-stopped", tail: "" }, "rb-fail-observe", "observe"],
  [{ at: "verify-persisted", dep: D }, { on: "persisted", dep: D }, "verify-observe", "observe"],
  [{ at: "verify-observe", dep: D }, observed(GEN2), "verify", "verify"],
  [{ at: "verify-observe", dep: D }, observed(GEN1), "rb-persisted", "persist"],
  [{ at: "verify-observe", dep: exhausted }, observed(GEN1), "rb-fail-observe", "observe"],
  [{ at: "verify-observe", dep: D }, observed(GEN3), "finish", "persist"],
  [{ at: "verify", dep: D }, { on: "verified", snapshot: snap(true), current: GEN2 }, "finish", "persist"],
  [
    { at: "verify", dep: D },
    { on: "verified", snapshot: snap(false), current: GEN2 },
    "rb-persisted",
    "persist",
  ],
  [
    { at: "verify", dep: exhausted },
    { on: "verified", snapshot: snap(false), current: GEN2 },
    "rb-fail-observe",
    "observe",
  ],
  [
    { at: "verify", dep: C },
    { on: "verified", snapshot: snap(true), current: GEN2 },
    "commit-persisted",
    "persist",
  ],
  [{ at: "commit-persisted", dep: C, commit }, { on: "persisted", dep: C }, "commit-profile", "set-profile"],
  [{ at: "commit-profile", dep: C, commit }, { on: "ok" }, "commit-boot", "boot-default"],
  [{ at: "commit-profile", dep: C, commit }, { on: "failed", message: "x" }, "rb-persisted", "persist"],
  [
    { at: "commit-profile", dep: dep({ activationOrder: "confirm", rollbackAttempts: 2 }), commit },
    { on: "failed", message: "x" },
    "rb-fail-observe",
    "observe",
  ],
  [{ at: "commit-boot", dep: C, commit }, { on: "ok" }, "finish", "persist"],
  [{ at: "commit-boot", dep: C, commit }, { on: "failed", message: "x" }, "rb-persisted", "persist"],
  [
    { at: "commit-boot", dep: dep({ activationOrder: "confirm", rollbackAttempts: 2 }), commit },
    { on: "failed", message: "x" },
    "rb-fail-observe",
    "observe",
  ],
  [{ at: "recover", dep: dep({ phase: "fetching" }) }, observed(GEN1), "finish", "persist"],
  [
    { at: "recover", dep: dep({ phase: "verifying", activationOrder: "confirm" }) },
    observed(GEN1, { bootId: "boot-2" }),
    "finish",
    "persist",
  ],
  [{ at: "recover", dep: D }, observed(GEN1, { profile: GEN2 }), "abandon", "restore-profile"],
  [
    { at: "recover", dep: dep({ phase: "switching" }) },
    observed(GEN2, { forward: { state: "running" } }),
    "switch",
    "wait-switch",
  ],
  [{ at: "recover", dep: dep({ phase: "verifying" }) }, observed(GEN2), "verify-persisted", "persist"],
  [{ at: "recover", dep: dep({ phase: "verifying" }) }, observed(GEN1), "rb-persisted", "persist"],
  [
    { at: "recover", dep: dep({ phase: "rolling_back", rollbackAttempts: 1 }) },
    observed(GEN2, { rollback: { state: "running" } }),
    "rb-switch",
    "wait-switch",
  ],
  [
    { at: "recover", dep: dep({ phase: "rolling_back", rollbackAttempts: 1 }) },
    observed(GEN1, { rollback: { state: "exited", code: 0 } }),
    "rb-restore",
    "restore-profile",
  ],
  [
    { at: "recover", dep: dep({ phase: "rolling_back", rollbackAttempts: 2 }) },
    observed(GEN2, { rollback: { state: "vanished" } }),
    "rb-fail-observe",
    "observe",
  ],
  [{ at: "abandon", dep: D, reason: "r" }, { on: "ok" }, "finish", "persist"],
  [{ at: "abandon", dep: D, reason: "r" }, { on: "failed", message: "x" }, "finish", "persist"],
  [{ at: "rb-persisted", dep: D, rb }, { on: "persisted", dep: D }, "rb-forward", "observe"],
  [
    { at: "rb-persisted", dep: D, rb },
    { on: "persisted", dep: dep({ activation: null }) },
    "rb-profile",
    "restore-profile",
  ],
  [
    { at: "rb-forward", dep: D, rb },
    observed(GEN2, { forward: { state: "running" } }),
    "rb-stop-forward",
    "stop-switch",
  ],
  [
    { at: "rb-forward", dep: D, rb },
    observed(GEN2, { forward: { state: "exited", code: 1 } }),
    "rb-profile",
    "restore-profile",
  ],
  [
    { at: "rb-stop-forward", dep: D, rb },
    { on: "switch-stopped", tail: "" },
    "rb-profile",
    "restore-profile",
  ],
  [{ at: "rb-profile", dep: D, rb }, { on: "ok" }, "rb-lock", "wait-lock"],
  [{ at: "rb-profile", dep: D, rb }, { on: "failed", message: "x" }, "rb-lock", "wait-lock"],
  [{ at: "rb-lock", dep: D, rb }, { on: "lock", held: false, description: "" }, "rb-plan", "plan-switch"],
  [
    { at: "rb-lock", dep: D, rb },
    { on: "lock", held: true, description: "held by pid 9" },
    "rb-persisted",
    "persist",
  ],
  [
    { at: "rb-lock", dep: exhausted, rb },
    { on: "lock", held: true, description: "held" },
    "rb-fail-observe",
    "observe",
  ],
  [
    { at: "rb-plan", dep: D, rb },
    { on: "planned", handle: handle("rollback-1", GEN1) },
    "rb-planned",
    "persist",
  ],
  [{ at: "rb-planned", dep: D, rb }, { on: "persisted", dep: D }, "rb-start", "start-switch"],
  [
    { at: "rb-start", dep: D, rb },
    { on: "started", handle: handle("rollback-1", GEN1) },
    "rb-recorded",
    "persist",
  ],
  [
    { at: "rb-start", dep: D, rb },
    { on: "start-failed", message: "x", status: { state: "vanished" } },
    "rb-persisted",
    "persist",
  ],
  [
    { at: "rb-start", dep: exhausted, rb },
    { on: "start-failed", message: "x", status: { state: "vanished" } },
    "rb-fail-observe",
    "observe",
  ],
  [{ at: "rb-recorded", dep: D, rb }, { on: "persisted", dep: D }, "rb-switch", "wait-switch"],
  [{ at: "rb-switch", dep: D, rb }, ended(0), "rb-judge", "observe"],
  [
    { at: "rb-switch", dep: D, rb },
    { on: "switch-ended", end: { kind: "timeout" }, tail: "" },
    "rb-kill",
    "stop-switch",
  ],
  [{ at: "rb-kill", dep: D, rb }, { on: "switch-stopped", tail: "" }, "rb-persisted", "persist"],
  [{ at: "rb-kill", dep: exhausted, rb }, { on: "switch-stopped", tail: "" }, "rb-fail-observe", "observe"],
  [
    { at: "rb-judge", dep: D, rb, end: { kind: "exited", code: 0 }, tail: "" },
    observed(GEN1),
    "rb-restore",
    "restore-profile",
  ],
  [
    { at: "rb-judge", dep: D, rb, end: { kind: "exited", code: 0 }, tail: "" },
    observed(GEN2),
    "rb-persisted",
    "persist",
  ],
  [
    { at: "rb-judge", dep: exhausted, rb, end: { kind: "exited", code: 1 }, tail: "" },
    observed(GEN2),
    "rb-fail-observe",
    "observe",
  ],
  [{ at: "rb-restore", dep: D, rb }, { on: "ok" }, "finish", "persist"],
  [{ at: "rb-restore", dep: D, rb }, { on: "failed", message: "x" }, "finish", "persist"],
  [{ at: "rb-fail-observe", dep: D, rb, problem: "p" }, observed(GEN2), "finish", "persist"],
  [{ at: "finish", verdict: "ok", after: [] }, { on: "persisted", dep: D }, "done", "—"],
  [{ at: "finish", verdict: "ok", after: [], park: "fetching" }, { on: "persisted", dep: D }, "done", "park"],
];

function persistOf(effects: Effect[]) {
  const last = effects.at(-1);
  return last?.do === "persist" ? last.write : undefined;
}

describe("deploy cycle transition table", () => {
  it("every row of the table is exercised, and each case lands where its row says", () => {
    const seen = new Set<string>();
    for (const [from, event, to, action, settings] of CASES) {
      const step = transition(from, event, { ...S, ...settings });
      assert.equal(`${step.state.at} [${actionOf(step)}]`, `${to} [${action}]`, `${from.at} on ${event.on}`);
      seen.add(rowKey(from.at, event.on, to, action));
    }
    const missing = TABLE.map((r) => rowKey(r.from, r.on, r.to, r.action)).filter((k) => !seen.has(k));
    assert.deepEqual(missing, [], "rows without a case");
  });

  it("refuses an event its state does not expect", () => {
    assert.throws(() => transition({ at: "fetch", dep: D }, { on: "ok" }, S), TransitionError);
  });

  it("commits an outcome with its quarantine and report in one write", () => {
    const step = transition({ at: "rb-restore", dep: D, rb }, { on: "ok" }, S);
    const w = persistOf(step.effects);
    assert.equal(w?.op, "finish");
    if (w?.op !== "finish") return;
    assert.equal(w.outcome, "ROLLED_BACK");
    assert.deepEqual(w.quarantine, { path: GEN2, revision: 3n, reason: rb.reason });
    assert.deepEqual(
      w.reports.map((r) => (r.kind === "report" ? r.outcome : "health")),
      ["ROLLED_BACK"],
    );
  });

  it("DEPLOYED commits with its post-apply health report", () => {
    const step = transition(
      { at: "verify", dep: D },
      { on: "verified", snapshot: snap(true), current: GEN2 },
      S,
    );
    const w = persistOf(step.effects);
    assert.ok(w?.op === "finish" && w.outcome === "DEPLOYED");
    assert.deepEqual(
      w.reports.map((r) => r.kind),
      ["report", "health"],
    );
  });

  it("an abandoned apply owes the control plane an outcome for its APPLYING; an abandoned fetch does not", () => {
    const apply = persistOf(
      transition({ at: "recover", dep: D }, observed(GEN1, { profile: GEN1 }), S).effects,
    );
    assert.ok(apply?.op === "finish" && apply.outcome === "INTERRUPTED");
    assert.deepEqual(
      apply.reports.map((r) => r.kind === "report" && r.outcome),
      ["FETCH_FAILED"],
    );
    const fetch = persistOf(
      transition({ at: "recover", dep: dep({ phase: "fetching" }) }, observed(GEN1), S).effects,
    );
    assert.ok(fetch?.op === "finish" && fetch.reports.length === 0);
  });

  it("dryRun ends after the fetch with DRY_RUN, never applying", () => {
    const step = transition({ at: "inspect", dep: D, source: "cache" }, inspected(), { ...S, dryRun: true });
    const w = persistOf(step.effects);
    assert.ok(w?.op === "finish" && w.outcome === "DRY_RUN");
  });

  it("confirm order: the new generation runs `test`; only a verified one moves the profile and boot default", () => {
    const planned = (d: typeof D) => {
      const last = transition({ at: "gc-roots", dep: d }, { on: "ok" }, S).effects.at(-1);
      return last?.do === "plan-switch" ? last.verb : last?.do;
    };
    assert.equal(planned(C), "test");
    assert.equal(planned(D), "set-profile", "switch order: the profile moves before the switch");
    const verified = transition(
      { at: "verify", dep: C },
      { on: "verified", snapshot: snap(true), current: GEN2 },
      S,
    );
    const w = persistOf(verified.effects);
    assert.ok(w?.op === "phase" && w.phase === "committing" && w.update.bootDefaultMoved === true);
    const done = persistOf(transition({ at: "commit-boot", dep: C, commit }, { on: "ok" }, S).effects);
    assert.ok(done?.op === "finish" && done.outcome === "DEPLOYED");
  });

  it("a rollback in the confirm window re-activates previous with `test`; after the commit started, `switch`", () => {
    const verb = (d: typeof D) => {
      const last = transition(
        { at: "rb-lock", dep: d, rb },
        { on: "lock", held: false, description: "" },
        S,
      ).effects.at(-1);
      return last?.do === "plan-switch" ? `${last.path} ${last.verb}` : last?.do;
    };
    assert.equal(verb(C), `${GEN1} test`);
    assert.equal(verb(dep({ activationOrder: "confirm", bootDefaultMoved: true })), `${GEN1} switch`);
    assert.equal(verb(D), `${GEN1} switch`);
  });

  for (const order of ["confirm", "switch"] as const) {
    it(`a reboot while verifying, host back on previous (${order} order): ${order === "confirm" ? "ROLLED_BACK_BY_REBOOT, quarantined" : "not a reboot rollback"}`, () => {
      const step = transition(
        { at: "recover", dep: dep({ phase: "verifying", activationOrder: order }) },
        observed(GEN1, { bootId: "boot-2" }),
        S,
      );
      const w = persistOf(step.effects);
      const byReboot =
        w?.op === "finish" &&
        w.outcome === "ROLLED_BACK_BY_REBOOT" &&
        w.quarantine?.path === GEN2 &&
        w.reports.some((r) => r.kind === "report" && r.outcome === "ROLLED_BACK_BY_REBOOT");
      assert.equal(byReboot, order === "confirm");
      // The same restart without a reboot is an agent crash: roll back as before.
      const crash = transition(
        { at: "recover", dep: dep({ phase: "verifying", activationOrder: order }) },
        observed(GEN1),
        S,
      );
      assert.equal(crash.state.at, "rb-persisted");
    });
  }

  it("docs/agent.md shows the transition table exactly as the code has it", () => {
    const doc = readFileSync(new URL("../../docs/agent.md", import.meta.url), "utf8");
    const begin = "<!-- transition-table:begin (generated from src/agent/cycle/table.ts) -->";
    const end = "<!-- transition-table:end -->";
    const from = doc.indexOf(begin);
    const to = doc.indexOf(end);
    assert.ok(from >= 0 && to > from, `docs/agent.md has the ${begin} … ${end} markers`);
    assert.equal(
      doc.slice(from + begin.length, to).trim(),
      renderTable(),
      "docs/agent.md's table differs from src/agent/cycle/table.ts: paste renderTable()'s output between the markers",
    );
  });
});
