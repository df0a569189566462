/**
 * Runs the real `nixfleet-control-plane` program (src/control-plane/main.ts through tsx) as a
 * child process, waits for its "listening" log line, and stops it.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { basename, dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import type { Pki } from "../fixtures/pki.js";
import { testDatabaseUrl } from "../fixtures/postgres.js";
import { programArgs } from "../fixtures/programs.js";
import { waitFor } from "./helpers.js";

export const REPO = join(import.meta.dirname, "../..");
const run = promisify(execFile);

export interface CpProcess {
  proc: ChildProcess;
  url: string;
  metricsUrl: string | undefined;
  lines: string[];
  stderr: string[];
  /** Parsed JSON log lines. */
  logs(): Record<string, unknown>[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * With NIXFLEET_TEST_STORE=postgres, `--db-path DIR/state.db` becomes `--database-url` of a fresh
 * PostgreSQL database bound to DIR (the same one again for a restart on the same DIR); other
 * paths (the usage-error cases) are left alone.
 */
async function backendArgs(args: readonly string[]): Promise<string[]> {
  const out = [...args];
  for (let i = 0; i < out.length - 1; i++) {
    if (out[i] !== "--db-path" || basename(out[i + 1]!) !== "state.db") continue;
    const url = await testDatabaseUrl(dirname(out[i + 1]!));
    if (url) out.splice(i, 2, "--database-url", url);
  }
  return out;
}

export function tlsArgs(pki: Pki): string[] {
  return ["--tls-cert", pki.server.cert, "--tls-key", pki.server.key, "--client-ca", pki.ca];
}

/** Runs a one-shot command of the program (e.g. `keys create`) and returns its output and exit code. */
export async function runCli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const argv = await backendArgs(args);
    const { stdout, stderr } = await run(process.execPath, [...programArgs("control-plane"), ...argv], {
      cwd: REPO,
      env: { ...process.env, ...env },
      timeout: 180_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

/** Starts `serve`; resolves once it logged "listening" (or `waitFor` says otherwise). */
export async function startCp(
  args: string[],
  options: { env?: Record<string, string>; waitForMsg?: string; timeoutMs?: number } = {},
): Promise<CpProcess> {
  const argv = await backendArgs(args);
  const proc = spawn(process.execPath, [...programArgs("control-plane"), "serve", ...argv], {
    cwd: REPO,
    env: { ...process.env, NIXFLEET_LOG_LEVEL: "", ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: string[] = [];
  const stderr: string[] = [];
  createInterface({ input: proc.stdout! }).on("line", (l) => lines.push(l));
  createInterface({ input: proc.stderr! }).on("line", (l) => stderr.push(l));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once("exit", (code, signal) => resolve({ code, signal })),
  );
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  const parsed = () =>
    lines.flatMap((l) => {
      try {
        return [JSON.parse(l) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
  const cp: CpProcess = {
    proc,
    url: "",
    metricsUrl: undefined,
    lines,
    stderr,
    logs: parsed,
    exited,
    async stop(signal = "SIGTERM") {
      if (!gone) proc.kill(signal);
      return exited;
    },
  };
  const msg = options.waitForMsg ?? "listening";
  const line = await Promise.race([
    waitFor(
      `the control plane to log "${msg}"`,
      () => parsed().find((l) => l["msg"] === msg),
      // Generous: a start on a loaded CI machine (PostgreSQL, four test files at once) takes long.
      options.timeoutMs ?? 120_000,
    ),
    exited.then(({ code, signal }) => {
      throw new Error(
        `the control plane exited early (code ${code}, signal ${signal}):\n${lines.join("\n")}\n${stderr.join("\n")}`,
      );
    }),
  ]).catch(async (err) => {
    proc.kill("SIGKILL");
    await exited;
    throw err;
  });
  cp.url = String(line["url"] ?? "");
  cp.metricsUrl = line["metricsUrl"] as string | undefined;
  return cp;
}
