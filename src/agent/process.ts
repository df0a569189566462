/**
 * Running external programs (nix, flock, systemctl, journalctl, health commands) with a hard
 * deadline. Every call has one: a stuck `nix copy` or `systemctl` must never stall the agent
 * (peer study §4 #14, #21). The child gets its own process group so a timeout kills everything
 * it started, not just the top process.
 */
import { spawn } from "node:child_process";

export interface RunOptions {
  /** Hard limit; the process group is killed when it passes. */
  timeoutMs: number;
  /** Aborting kills the process group too (agent shutdown). */
  signal?: AbortSignal | undefined;
  env?: NodeJS.ProcessEnv | undefined;
  cwd?: string | undefined;
  /** Bytes of stdout/stderr kept (the tail); default 64 KiB each. */
  maxOutputBytes?: number | undefined;
}

export interface RunResult {
  /** Exit code, or null when killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  aborted: boolean;
  durationMs: number;
  /** Set when the program could not be started (ENOENT, EACCES). */
  spawnError?: string;
}

/** Keeps only the last `max` bytes written, so a chatty child cannot exhaust memory. */
class TailBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly max: number) {}
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size > this.max && this.chunks.length > 1) {
      this.size -= this.chunks.shift()!.length;
    }
  }
  toString(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.max)).toString("utf8");
  }
}

function killGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

export function runCommand(argv: readonly string[], options: RunOptions): Promise<RunResult> {
  const [file, ...args] = argv;
  if (!file) throw new Error("runCommand: empty argv");
  const max = options.maxOutputBytes ?? 64 * 1024;
  const started = Date.now();
  return new Promise((resolve) => {
    const stdout = new TailBuffer(max);
    const stderr = new TailBuffer(max);
    let timedOut = false;
    let aborted = false;
    let settled = false;
    const child = spawn(file, args, {
      env: options.env ?? process.env,
      cwd: options.cwd,
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout.on("data", (c: Buffer) => stdout.push(c));
    child.stderr.on("data", (c: Buffer) => stderr.push(c));
    const stop = (why: "timeout" | "abort") => {
      if (why === "timeout") timedOut = true;
      else aborted = true;
      killGroup(child.pid, "SIGTERM");
      // A child that ignores SIGTERM gets SIGKILL shortly after.
      setTimeout(() => killGroup(child.pid, "SIGKILL"), 2000).unref();
    };
    const timer = setTimeout(() => stop("timeout"), options.timeoutMs);
    const onAbort = () => stop("abort");
    if (options.signal?.aborted) onAbort();
    else options.signal?.addEventListener("abort", onAbort, { once: true });
    const finish = (result: Omit<RunResult, "stdout" | "stderr" | "timedOut" | "aborted" | "durationMs">) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      resolve({
        ...result,
        stdout: stdout.toString(),
        stderr: stderr.toString(),
        timedOut,
        aborted,
        durationMs: Date.now() - started,
      });
    };
    child.on("error", (err: NodeJS.ErrnoException) => {
      finish({ code: null, signal: null, spawnError: `${file}: ${err.code ?? err.message}` });
    });
    child.on("close", (code, signal) => finish({ code, signal }));
  });
}

/** A one-line summary of how a command ended, for error messages. */
export function describeExit(result: RunResult, timeoutMs?: number): string {
  if (result.spawnError) return `could not be started (${result.spawnError})`;
  if (result.timedOut)
    return `timed out after ${Math.round((timeoutMs ?? result.durationMs) / 1000)} s and was killed`;
  if (result.aborted) return "was interrupted (agent shutting down)";
  if (result.signal) return `was killed by ${result.signal}`;
  return `exited with code ${result.code}`;
}
