/**
 * The nix commands `release create --flake` runs: list a flake's NixOS hosts, build their system
 * toplevels, read platform and revision, and push closures to a cache. Each call has a deadline
 * and failures quote nix's own (trimmed) stderr.
 */
import { execFile } from "node:child_process";
import { CliFailure } from "./errors.js";

export type NixRunner = (args: string[], opts?: { timeoutMs?: number }) => Promise<string>;

const STDERR_LIMIT = 2000;

function trimStderr(stderr: string): string {
  const s = stderr.trim();
  return s.length > STDERR_LIMIT ? `…${s.slice(-STDERR_LIMIT)}` : s;
}

export const runNix: NixRunner = (args, opts = {}) =>
  new Promise((resolve, reject) => {
    execFile(
      "nix",
      ["--extra-experimental-features", "nix-command flakes", ...args],
      { timeout: opts.timeoutMs ?? 30 * 60_000, maxBuffer: 64 << 20, killSignal: "SIGKILL" },
      (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        const e = err as NodeJS.ErrnoException & { killed?: boolean };
        if (e.code === "ENOENT") {
          return reject(
            new CliFailure(
              "`nix` is not installed or not on PATH",
              "install Nix, or pass --entry host=/nix/store/… instead of --flake",
            ),
          );
        }
        const why = e.killed
          ? `timed out after ${Math.round((opts.timeoutMs ?? 0) / 1000)}s`
          : trimStderr(stderr) || e.message;
        reject(new CliFailure(`nix ${args.slice(0, 2).join(" ")} failed: ${why}`));
      },
    );
  });

export interface FlakeHost {
  hostname: string;
  storePath: string;
  platform: string;
}

export async function flakeHosts(nix: NixRunner, flake: string): Promise<string[]> {
  const out = await nix(["eval", "--json", `${flake}#nixosConfigurations`, "--apply", "builtins.attrNames"]);
  const names = JSON.parse(out) as unknown;
  if (!Array.isArray(names) || names.some((n) => typeof n !== "string")) {
    throw new CliFailure(`${flake}#nixosConfigurations did not evaluate to an attribute set of hosts`);
  }
  return names as string[];
}

/** Builds one host's toplevel (Nix 2.8 has no --print-out-paths, so --json) and reads its platform. */
export async function buildHost(nix: NixRunner, flake: string, hostname: string): Promise<FlakeHost> {
  const attr = `${flake}#nixosConfigurations."${hostname}"`;
  const built = JSON.parse(
    await nix(["build", "--no-link", "--json", `${attr}.config.system.build.toplevel`]),
  ) as {
    outputs?: { out?: string };
  }[];
  const storePath = built[0]?.outputs?.out;
  if (!storePath) throw new CliFailure(`nix build of ${hostname}'s toplevel printed no output path`);
  let platform = "";
  try {
    platform = JSON.parse(await nix(["eval", "--json", `${attr}.pkgs.system`])) as string;
  } catch {
    // A configuration without pkgs (unusual) still deploys; platform is informational.
  }
  return { hostname, storePath, platform };
}

export async function flakeRevision(
  nix: NixRunner,
  flake: string,
): Promise<{ url: string; revision: string }> {
  const meta = JSON.parse(await nix(["flake", "metadata", "--json", flake])) as {
    originalUrl?: string;
    resolvedUrl?: string;
    revision?: string;
  };
  // originalUrl is what the user named; `url` carries lock attributes nobody wants to read.
  return { url: meta.originalUrl ?? meta.resolvedUrl ?? flake, revision: meta.revision ?? "" };
}

export async function pushToCache(nix: NixRunner, cache: string, paths: string[]): Promise<void> {
  await nix(["copy", "--to", cache, ...paths]);
}
