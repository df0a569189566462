/**
 * Evaluates Nix expressions with the real `nix-instantiate` (Debian's nix-bin) for the Nix test
 * tier: the NixOS modules in nix/modules/ against the `lib` stub in this folder (eval.nix), and
 * the pure helpers in nix/. No nixpkgs is needed or fetched.
 */
import { execFile } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const EVAL_NIX = join(REPO, "test/nix/eval.nix");

/** No substituters (no 4.5 s wait on cache.nixos.org), no sandbox, the `nix` command enabled. */
export const NIX_ENV = {
  ...process.env,
  NIX_CONFIG: "substituters =\nsandbox = false\nexperimental-features = nix-command",
};

/** A failed evaluation: nix's own message (stderr), which names the option or assertion. */
export class NixEvalError extends Error {
  constructor(
    readonly expr: string,
    readonly stderr: string,
  ) {
    super(`nix-instantiate failed: ${stderr.trim().slice(0, 2000)}\nexpression: ${expr.slice(0, 500)}`);
    this.name = "NixEvalError";
  }
}

function run(args: string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    execFile(
      "nix-instantiate",
      args,
      { env: NIX_ENV, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err)
          reject(
            new NixEvalError(
              args[args.length - 1] ?? "",
              `${stderr}${err.killed ? " (killed: timeout)" : ""}`,
            ),
          );
        else resolvePromise(stdout);
      },
    );
  });
}

/** `nix-instantiate --eval --strict --json --expr EXPR`, parsed. */
export async function evalJson<T = unknown>(expr: string): Promise<T> {
  return JSON.parse(await run(["--eval", "--strict", "--json", "--expr", expr])) as T;
}

/** `nix-instantiate --parse FILE` (throws NixEvalError on a syntax error). */
export async function parseFile(file: string): Promise<void> {
  await run(["--parse", file]);
}

/** A Nix string literal for any text (JSON strings are valid Nix strings once `$` is escaped). */
export function nixString(text: string): string {
  return JSON.stringify(text).replace(/\$\{/g, "\\${");
}

export interface ModuleEvalOptions {
  /** NixOS configuration modules, as Nix expressions (e.g. `{ services.nixfleet-agent = { … }; }`). */
  modules: string[];
  /** Declare impermanence's `environment.persistence`. */
  impermanence?: boolean;
  /** Import the modules through the flake's `nixosModules.default`. */
  viaFlake?: boolean;
  /** A Nix expression for a real nixpkgs lib instead of the stub (cross-checks). */
  lib?: string;
}

/** One attribute of test/nix/eval.nix's result for the given configuration. */
export function evalModules<T = unknown>(attr: string, options: ModuleEvalOptions): Promise<T> {
  const args = [
    `modules = [ ${options.modules.map((m) => `(${m})`).join(" ")} ];`,
    options.impermanence ? "impermanence = true;" : "",
    options.viaFlake ? "viaFlake = true;" : "",
    options.lib ? `lib = ${options.lib};` : "",
  ].join(" ");
  return evalJson<T>(`(import ${EVAL_NIX} { ${args} }).${attr}`);
}

/** What eval.nix reports for a systemd service. */
export interface Unit {
  description: string;
  wantedBy: string[];
  wants: string[];
  after: string[];
  environment: Record<string, string>;
  path: string[];
  restartIfChanged: boolean;
  reloadIfChanged: boolean;
  stopIfChanged: boolean;
  restartTriggers: string[];
  reloadTriggers: string[];
  startLimitIntervalSec: number | null;
  serviceConfig: Record<string, unknown>;
}
