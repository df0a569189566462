/**
 * A bench child process (`node --import tsx bench/<script>`), with its stdout read line by line
 * so the orchestrator can wait for what it prints, and its stdin open for commands.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { join } from "node:path";
import { programArgs } from "../test/fixtures/programs.js";

export const ROOT = join(import.meta.dirname, "..");

export interface Child {
  proc: ChildProcess;
  lines: string[];
  exited: Promise<number>;
  /** Resolves with the first line (printed from `from` on) matching `pred`. */
  waitLine(pred: (l: string) => boolean, from?: number): Promise<string>;
  /** Writes a command line, then waits for the next JSON line printed after it. */
  command(line: string): Promise<Record<string, unknown>>;
}

export function lineChild(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): Child {
  const proc = spawn(command, args, { cwd: ROOT, env, stdio: ["pipe", "pipe", "inherit"] });
  const lines: string[] = [];
  let buf = "";
  const waiters: { pred: (l: string) => boolean; resolve: (l: string) => void }[] = [];
  proc.stdout!.on("data", (c: Buffer) => {
    buf += c.toString();
    for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      lines.push(line);
      for (const w of waiters.splice(0)) w.pred(line) ? w.resolve(line) : waiters.push(w);
    }
  });
  const exited = new Promise<number>((resolve) => proc.on("exit", (code) => resolve(code ?? 1)));
  const waitLine = (pred: (l: string) => boolean, from = 0) =>
    new Promise<string>((resolve, reject) => {
      const hit = lines.slice(from).find(pred);
      if (hit) return resolve(hit);
      waiters.push({ pred, resolve });
      void exited.then((code) =>
        reject(new Error(`${args.at(-2) ?? command} exited ${code} before printing the expected line`)),
      );
    });
  return {
    proc,
    lines,
    exited,
    waitLine,
    async command(line) {
      const from = lines.length;
      proc.stdin!.write(`${line}\n`);
      return JSON.parse(await waitLine((l) => l.startsWith("{"), from)) as Record<string, unknown>;
    },
  };
}

/** A TypeScript script under bench/ run with tsx. */
export function child(script: string, args: string[]): Child {
  return lineChild(process.execPath, ["--import", "tsx", join(ROOT, "bench", script), ...args]);
}

/** An admin API key for the bench, made the way an operator makes the first one (`keys create --init`). */
export function createAdminKey(dbArgs: readonly string[]): string {
  return execFileSync(
    process.execPath,
    [
      ...programArgs("control-plane"),
      "keys",
      "create",
      "--init",
      ...dbArgs,
      "--name",
      "bench",
      "--role",
      "admin",
    ],
    { cwd: ROOT },
  )
    .toString()
    .trim();
}
