/**
 * Reading a transient switch unit's state with `systemctl show`: one query answers both "is it
 * still running" and, for a unit that ended without the wrapper's status file (the wrapper was
 * killed), how it ended. A failed unit is a failed switch with systemd's exit status and reason;
 * a query that fails itself (no bus, timeout) is an error, never read as "the switch vanished".
 */
import { constants } from "node:os";
import { runCommand } from "./process.js";

export class SwitchQueryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SwitchQueryError";
  }
}

export interface UnitState {
  loadState: string;
  activeState: string;
  subState: string;
  /** systemd's `Result`: success, exit-code, signal, core-dump, timeout, oom-kill, … */
  result: string;
  /** How the main process ended: 1 exited, 2 killed, 3 dumped (CLD_*); 0 when it never ended. */
  execMainCode: number;
  /** Its exit status (exited) or signal number (killed, dumped). */
  execMainStatus: number;
}

const PROPERTIES = ["LoadState", "ActiveState", "SubState", "Result", "ExecMainCode", "ExecMainStatus"];

/** Parses `systemctl show --property=…` output; undefined when ActiveState is missing. */
export function parseUnitShow(text: string): UnitState | undefined {
  const v = new Map<string, string>();
  for (const line of text.split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) v.set(line.slice(0, eq), line.slice(eq + 1).trim());
  }
  const activeState = v.get("ActiveState");
  if (!activeState) return undefined;
  return {
    loadState: v.get("LoadState") ?? "",
    activeState,
    subState: v.get("SubState") ?? "",
    result: v.get("Result") ?? "",
    execMainCode: Number(v.get("ExecMainCode") ?? 0) || 0,
    execMainStatus: Number(v.get("ExecMainStatus") ?? 0) || 0,
  };
}

/** ActiveStates in which the unit's processes may still run. */
const LIVE = new Set(["active", "activating", "deactivating", "reloading", "refreshing"]);

export function unitRunning(state: UnitState): boolean {
  return LIVE.has(state.activeState);
}

const CLD_EXITED = 1;

function signalName(n: number): string {
  const name = Object.entries(constants.signals).find(([, num]) => num === n)?.[0];
  return name ?? `signal ${n}`;
}

/**
 * The exit of a `failed` unit in the shell's convention (the wrapper's own status file uses it
 * too: 143 for SIGTERM): the exit status, or 128 + the signal that killed the switch. A unit
 * that failed without its main process ending (systemd refused to run it) reads as 1.
 */
export function unitFailure(state: UnitState): { code: number; reason: string } {
  const killed = state.execMainCode > CLD_EXITED;
  const code =
    state.execMainCode === CLD_EXITED ? state.execMainStatus : killed ? 128 + state.execMainStatus : 1;
  const how =
    state.execMainCode === CLD_EXITED
      ? `exit status ${state.execMainStatus}`
      : killed
        ? `killed by ${signalName(state.execMainStatus)}`
        : "its process never ended normally";
  return { code, reason: `the switch unit failed (Result=${state.result || "unknown"}, ${how})` };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * `systemctl show` of `unit`, tried `attempts` times `retryMs` apart: a busy or restarting
 * systemd (the switch itself may be re-executing it) answers a moment later.
 */
export async function queryUnit(
  unit: string,
  env: NodeJS.ProcessEnv,
  options: { attempts?: number; retryMs?: number; timeoutMs?: number } = {},
): Promise<UnitState> {
  const attempts = options.attempts ?? 3;
  let last = "";
  for (let i = 0; i < attempts; i++) {
    if (i > 0) await sleep(options.retryMs ?? 1000);
    const result = await runCommand(["systemctl", "show", `--property=${PROPERTIES.join(",")}`, unit], {
      timeoutMs: options.timeoutMs ?? 15_000,
      env,
    });
    const state = result.code === 0 ? parseUnitShow(result.stdout) : undefined;
    if (state) return state;
    last = result.spawnError
      ? `could not be started (${result.spawnError})`
      : result.timedOut
        ? "timed out"
        : `exited ${result.code ?? result.signal}: ${(result.stderr.trim() || result.stdout.trim()).slice(0, 300)}`;
  }
  throw new SwitchQueryError(
    `cannot read the state of ${unit}: systemctl show ${last} (${attempts} attempts)`,
  );
}
