/**
 * Running `<closure>/bin/switch-to-configuration switch` so that it survives the agent: the
 * switch restarts services, and the agent may be one of them (peer study §4 #1, #3). The switch
 * is started detached — a transient systemd unit, or a process group of its own — and a tiny
 * shell wrapper writes its exit status to a file. A restarted agent finds the switch again by
 * that file (and the unit name or the wrapper's command line) and learns how it ended, so the
 * outcome is durable even when no agent was alive to see it.
 */
import { spawn } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
} from "node:fs";
import { join } from "node:path";
import { describeExit, runCommand } from "./process.js";
import { type SwitchWatch, watchFile } from "./switch-watch.js";
import { queryUnit, unitFailure, unitRunning } from "./systemd-unit.js";

export { SwitchQueryError } from "./systemd-unit.js";

/**
 * Runs the switch and records its exit status. Only shell built-ins after the switch: a
 * transient unit's PATH on NixOS has no coreutils. `$1` = closure, `$2` = status file, `$3` =
 * the verb (`switch`, or `test` in the confirm window).
 * The TERM trap (a handler, so the switch itself still gets the default disposition) keeps the
 * wrapper alive when its process group is sent SIGTERM, so a terminated switch still leaves its
 * status (143) behind.
 */
export const ACTIVATION_WRAPPER =
  'trap : TERM; "$1/bin/switch-to-configuration" "$3"; rc=$?; printf \'%s\\n\' "$rc" > "$2"; exit "$rc"';

/**
 * The verbs of switch-to-configuration the agent runs detached: `switch` (activate and make it
 * the boot default) or `test` (activate only: the confirm window). `boot` (boot default only)
 * does not restart anything and runs as an ordinary child (`makeBootDefault`).
 */
export type SwitchVerb = "switch" | "test";

export interface ActivationHandle {
  mode: "direct" | "systemd-run";
  /** What the switch is for, e.g. "switch" or "rollback-1"; part of file and unit names. */
  role: string;
  /** The closure whose switch-to-configuration runs. */
  path: string;
  /** Absent in handles journaled by older agents: `switch`. */
  verb?: SwitchVerb;
  statusFile: string;
  /** Output of the switch (direct mode; systemd mode logs to the journal of `unit`). */
  logFile: string;
  /** Transient unit name (systemd-run mode). */
  unit?: string;
  /** The wrapper's pid = process group id (direct mode). */
  pid?: number;
  /** ms since the epoch; timeouts are measured from here, across agent restarts. */
  startedAt: number;
}

export type ActivationStatus =
  | { state: "running" }
  /** `reason`: how it ended when no status file said so (systemd's record of a failed unit). */
  | { state: "exited"; code: number; reason?: string }
  /** Neither running nor a recorded exit status: killed, or the machine rebooted. */
  | { state: "vanished" };

export interface ActivationRequest {
  deploymentId: string;
  role: string;
  path: string;
  /** Default `switch`. */
  verb?: SwitchVerb;
}

export interface Activator {
  readonly mode: "direct" | "systemd-run";
  /**
   * The handle a switch for this request has: file and unit names are derived from the
   * deployment id, so the journal can record it *before* the switch starts and a restarted agent
   * can look for the switch even if it died between the spawn and the journal write.
   */
  plan(request: ActivationRequest): ActivationHandle;
  /** Starts the planned switch; returns the handle with pid and start time filled in. */
  start(planned: ActivationHandle): Promise<ActivationHandle>;
  /**
   * Rejects with SwitchQueryError when the state cannot be read (systemd did not answer): not
   * knowing is not "vanished".
   */
  status(handle: ActivationHandle): Promise<ActivationStatus>;
  /**
   * Something to wait on between looks at `status`: wakes when the switch's status file is
   * written. Open it before the first look (see switch-watch.ts).
   */
  watch(handle: ActivationHandle): SwitchWatch;
  /** Kills the switch (activation timeout); resolves once it is gone or after a bounded wait. */
  stop(handle: ActivationHandle): Promise<void>;
  /** The last lines of the switch's output, for reports. */
  outputTail(handle: ActivationHandle): Promise<string>;
  /**
   * `<path>/bin/switch-to-configuration boot`: makes `path` the boot default without touching
   * the running system. Rejects with the exit and trimmed output when it fails or times out.
   */
  makeBootDefault(path: string, options: { timeoutMs: number }): Promise<void>;
}

/** systemd unit names allow [A-Za-z0-9:_.\-]; deployment ids are UUIDs, roles are ours. */
export function unitName(deploymentId: string, role: string): string {
  const safe = `${deploymentId}-${role}`.replace(/[^A-Za-z0-9:_.-]/g, "_");
  return role === "switch" ? `nixfleet-switch-${deploymentId}` : `nixfleet-switch-${safe}`;
}

/** The argv that starts a switch as a transient unit (pure; unit-tested). */
export function systemdRunArgv(
  unit: string,
  path: string,
  statusFile: string,
  verb: SwitchVerb = "switch",
): string[] {
  return [
    "systemd-run",
    `--unit=${unit}`,
    // Unload the unit when it ends, even when it failed, so a name is never "already loaded".
    "--collect",
    "--no-ask-password",
    "--quiet",
    // Return only once the wrapper was exec'd, so a start failure is an error here.
    "--service-type=exec",
    // What nixos-rebuild passes to its own transient switch unit.
    "--setenv=LOCALE_ARCHIVE",
    "--setenv=NIXOS_INSTALL_BOOTLOADER",
    `--description=nixfleet: switch-to-configuration ${verb}`,
    "--",
    "/bin/sh",
    "-c",
    ACTIVATION_WRAPPER,
    "nixfleet-activate",
    path,
    statusFile,
    verb,
  ];
}

/** Reads a status file: the exit code, or undefined while it is absent or half-written. */
export function readStatusFile(statusFile: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(statusFile, "utf8");
  } catch {
    return undefined;
  }
  const m = /^(\d{1,3})\n/.exec(text);
  return m ? Number(m[1]) : undefined;
}

function readTail(file: string, maxBytes: number): string {
  try {
    const size = statSync(file).size;
    const fd = openSync(file, "r");
    try {
      const length = Math.min(size, maxBytes);
      const buf = Buffer.alloc(length);
      readSync(fd, buf, 0, length, size - length);
      return buf.toString("utf8");
    } finally {
      closeSync(fd);
    }
  } catch {
    return "";
  }
}

/** Pids whose command line contains `needle` (the status file path is unique per switch). */
function pidsWithArg(needle: string): number[] {
  const out: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return out;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
      if (args.includes(needle)) out.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

function alive(pid: number, statusFile: string): boolean {
  try {
    // A zombie has an empty cmdline, so it counts as gone.
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").includes(statusFile);
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

abstract class FileBackedActivator implements Activator {
  abstract readonly mode: "direct" | "systemd-run";
  constructor(protected readonly dir: string) {}

  plan(request: ActivationRequest): ActivationHandle {
    const base = join(this.dir, `${request.deploymentId}-${request.role}`);
    const handle: ActivationHandle = {
      mode: this.mode,
      role: request.role,
      path: request.path,
      verb: request.verb ?? "switch",
      statusFile: `${base}.status`,
      logFile: `${base}.log`,
      startedAt: Date.now(),
    };
    if (this.mode === "systemd-run") handle.unit = unitName(request.deploymentId, request.role);
    return handle;
  }

  /** Prepares the directory and clears a leftover status file of an earlier attempt. */
  protected prepare(handle: ActivationHandle): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    rmSync(handle.statusFile, { force: true });
  }

  watch(handle: ActivationHandle): SwitchWatch {
    return watchFile(handle.statusFile);
  }

  abstract start(planned: ActivationHandle): Promise<ActivationHandle>;
  abstract status(handle: ActivationHandle): Promise<ActivationStatus>;
  abstract stop(handle: ActivationHandle): Promise<void>;
  abstract outputTail(handle: ActivationHandle): Promise<string>;

  async makeBootDefault(path: string, options: { timeoutMs: number }): Promise<void> {
    const result = await runCommand([`${path}/bin/switch-to-configuration`, "boot"], {
      timeoutMs: options.timeoutMs,
      env: this.environment,
    });
    if (result.code === 0) return;
    const output = `${result.stderr}${result.stdout}`.trim().slice(-500);
    throw new Error(
      `${path}/bin/switch-to-configuration boot ${describeExit(result, options.timeoutMs)}${output ? `: ${output}` : ""}`,
    );
  }

  protected abstract get environment(): NodeJS.ProcessEnv;
}

/** A detached process group (non-systemd hosts, tests). */
export class DirectActivator extends FileBackedActivator {
  readonly mode = "direct" as const;

  constructor(
    dir: string,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {
    super(dir);
  }

  protected get environment(): NodeJS.ProcessEnv {
    return this.env;
  }

  async start(planned: ActivationHandle): Promise<ActivationHandle> {
    this.prepare(planned);
    const out = openSync(planned.logFile, "a", 0o600);
    try {
      const child = spawn(
        "/bin/sh",
        [
          "-c",
          ACTIVATION_WRAPPER,
          "nixfleet-activate",
          planned.path,
          planned.statusFile,
          planned.verb ?? "switch",
        ],
        // detached: a new session and process group, so neither the agent's exit nor a signal
        // to the agent's group reaches the switch.
        { detached: true, stdio: ["ignore", out, out], env: this.env },
      );
      await new Promise<void>((resolve, reject) => {
        child.once("spawn", resolve);
        child.once("error", reject);
      });
      child.unref();
      return { ...planned, pid: child.pid!, startedAt: Date.now() };
    } finally {
      closeSync(out);
    }
  }

  async status(handle: ActivationHandle): Promise<ActivationStatus> {
    const code = readStatusFile(handle.statusFile);
    if (code !== undefined) return { state: "exited", code };
    const running =
      (handle.pid !== undefined && alive(handle.pid, handle.statusFile)) ||
      pidsWithArg(handle.statusFile).length > 0;
    if (running) return { state: "running" };
    // The wrapper may have written its status between the two reads.
    const late = readStatusFile(handle.statusFile);
    return late !== undefined ? { state: "exited", code: late } : { state: "vanished" };
  }

  async stop(handle: ActivationHandle): Promise<void> {
    const groups = new Set<number>(pidsWithArg(handle.statusFile));
    if (handle.pid !== undefined && alive(handle.pid, handle.statusFile)) groups.add(handle.pid);
    const signalAll = (signal: NodeJS.Signals) => {
      for (const pid of groups) {
        try {
          process.kill(-pid, signal);
        } catch {
          try {
            process.kill(pid, signal);
          } catch {
            // gone
          }
        }
      }
    };
    const anyAlive = () =>
      [...groups].some((pid) => alive(pid, handle.statusFile)) || pidsWithArg(handle.statusFile).length > 0;
    signalAll("SIGTERM");
    let deadline = Date.now() + 5000;
    while (Date.now() < deadline && anyAlive()) await sleep(100);
    if (!anyAlive()) return;
    signalAll("SIGKILL");
    // SIGKILL is delivered asynchronously: wait (briefly) until the processes are really gone.
    deadline = Date.now() + 5000;
    while (Date.now() < deadline && anyAlive()) await sleep(50);
  }

  async outputTail(handle: ActivationHandle): Promise<string> {
    return readTail(handle.logFile, 8192);
  }
}

/** A transient systemd unit (`systemd-run`), the default on NixOS. */
export class SystemdRunActivator extends FileBackedActivator {
  readonly mode = "systemd-run" as const;

  constructor(
    dir: string,
    private readonly env: NodeJS.ProcessEnv = process.env,
    private readonly o: { queryRetryMs?: number } = {},
  ) {
    super(dir);
  }

  protected get environment(): NodeJS.ProcessEnv {
    return this.env;
  }

  async start(planned: ActivationHandle): Promise<ActivationHandle> {
    this.prepare(planned);
    const unit = planned.unit!;
    const result = await runCommand(systemdRunArgv(unit, planned.path, planned.statusFile, planned.verb), {
      timeoutMs: 60_000,
      env: this.env,
    });
    if (result.code !== 0) {
      throw new Error(
        `systemd-run --unit=${unit} ${result.spawnError ?? `exited ${result.code}`}: ${result.stderr.trim().slice(0, 500)}`,
      );
    }
    return { ...planned, startedAt: Date.now() };
  }

  /**
   * The status file first (the wrapper's record); without one, the unit: running, failed (the
   * wrapper was killed: systemd's exit status and reason), or gone. A query that fails rejects
   * with SwitchQueryError — "cannot tell" is not "vanished".
   */
  async status(handle: ActivationHandle): Promise<ActivationStatus> {
    const code = readStatusFile(handle.statusFile);
    if (code !== undefined) return { state: "exited", code };
    const unit = await queryUnit(`${handle.unit!}.service`, this.env, {
      ...(this.o.queryRetryMs !== undefined ? { retryMs: this.o.queryRetryMs } : {}),
    });
    if (unitRunning(unit)) return { state: "running" };
    // The wrapper may have written its status between the two reads.
    const late = readStatusFile(handle.statusFile);
    if (late !== undefined) return { state: "exited", code: late };
    if (unit.activeState === "failed") return { state: "exited", ...unitFailure(unit) };
    return { state: "vanished" };
  }

  async stop(handle: ActivationHandle): Promise<void> {
    const unit = `${handle.unit!}.service`;
    // A state that cannot be read counts as still running: escalate rather than assume it ended.
    const running = async () =>
      (await this.status(handle).catch(() => ({ state: "running" }))).state === "running";
    await runCommand(["systemctl", "kill", "--signal=SIGTERM", unit], { timeoutMs: 15_000, env: this.env });
    let deadline = Date.now() + 5000;
    while (Date.now() < deadline && (await running())) await sleep(200);
    if (!(await running())) return;
    await runCommand(["systemctl", "kill", "--signal=SIGKILL", unit], { timeoutMs: 15_000, env: this.env });
    deadline = Date.now() + 5000;
    while (Date.now() < deadline && (await running())) await sleep(200);
  }

  async outputTail(handle: ActivationHandle): Promise<string> {
    const result = await runCommand(
      ["journalctl", "--unit", `${handle.unit!}.service`, "-n", "40", "--no-pager", "-o", "cat"],
      {
        timeoutMs: 15_000,
        env: this.env,
      },
    );
    return result.stdout;
  }
}

export function createActivator(
  mode: "direct" | "systemd-run",
  dir: string,
  env?: NodeJS.ProcessEnv,
): Activator {
  return mode === "direct" ? new DirectActivator(dir, env) : new SystemdRunActivator(dir, env);
}

/** Removes status and log files older than `maxAgeMs` (called at start-up). */
export function pruneActivationFiles(
  dir: string,
  maxAgeMs: number,
  keep: ReadonlySet<string> = new Set(),
): void {
  if (!existsSync(dir)) return;
  const cutoff = Date.now() - maxAgeMs;
  for (const name of readdirSync(dir)) {
    const file = join(dir, name);
    if (keep.has(file)) continue;
    try {
      if (statSync(file).mtimeMs < cutoff) rmSync(file, { force: true });
    } catch {
      // raced with another removal
    }
  }
}
