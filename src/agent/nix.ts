/**
 * The agent's use of Nix: fetch a closure (`nix copy --from`, or `nix path-info` when no cache is
 * named), set the system profile, pin GC roots. Every call has a hard timeout and reports the
 * trimmed stderr, so a failure reaches the control plane as a sentence an operator can act on.
 */
import { mkdirSync, readdirSync, readlinkSync, renameSync, rmSync, symlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { describeExit, type RunResult, runCommand } from "./process.js";
import { trimOutput } from "./text.js";

export type FetchFailureKind = "missing" | "signature" | "unreachable" | "timeout" | "interrupted" | "other";

export class FetchError extends Error {
  constructor(
    readonly kind: FetchFailureKind,
    message: string,
  ) {
    super(message);
    this.name = "FetchError";
  }
}

export class NixCommandError extends Error {
  constructor(
    message: string,
    readonly result: RunResult,
  ) {
    super(message);
    this.name = "NixCommandError";
  }
}

export interface CallOptions {
  timeoutMs: number;
  signal?: AbortSignal | undefined;
}

/** Classifies `nix copy` stderr into what the operator should look at. */
export function classifyFetchFailure(stderr: string): FetchFailureKind {
  if (/lacks a valid signature|no signature is trusted|signature.*(invalid|mismatch)/i.test(stderr))
    return "signature";
  if (
    /is required, but there is no substituter|does not exist in binary cache|don't know how to build|is not valid|path '.*' does not exist/i.test(
      stderr,
    )
  ) {
    return "missing";
  }
  if (
    /unable to download|couldn't connect|could not resolve|connection refused|timed out|HTTP error [45]\d\d|SSL|name or service not known/i.test(
      stderr,
    )
  ) {
    return "unreachable";
  }
  return "other";
}

const FETCH_ADVICE: Record<FetchFailureKind, string> = {
  missing: "push the closure to the cache (nix copy --to <cache> <path>) or check the cache URL",
  signature: "sign the closure with a key listed in this host's trusted-public-keys",
  unreachable: "check that the cache is up and reachable from this host",
  timeout: "the cache is slow or stalled; raise fetchTimeout or check the cache",
  interrupted: "the agent was stopping; the fetch is retried on the next cycle",
  other: "see the error above",
};

/** How many paths fetch() found valid are remembered for rooting them without Nix. */
const VALIDATED_KEPT = 8;

function readlinkOr(path: string): string | undefined {
  try {
    return readlinkSync(path);
  } catch {
    return undefined;
  }
}

export class Nix {
  /** A link's entry in gcroots/auto, once seen: what makes the link an indirect GC root. */
  private readonly autoRoots = new Map<string, string>();
  /** Paths fetch() just found valid (newest last). */
  private readonly validated: string[] = [];

  constructor(private readonly env: NodeJS.ProcessEnv = process.env) {}

  private run(argv: string[], options: CallOptions): Promise<RunResult> {
    return runCommand(argv, { timeoutMs: options.timeoutMs, signal: options.signal, env: this.env });
  }

  /** Whether `path` is a valid path in the local store (`nix path-info --json`, checking "valid"). */
  async isValid(path: string, options: CallOptions): Promise<boolean> {
    const result = await this.run(["nix", "path-info", "--json", path], options);
    if (result.code !== 0) {
      // Older Nix exits 1 for an invalid path; treat "not valid" messages as false, others as errors.
      if (/is not valid|does not exist|don't know how to build/i.test(result.stderr)) return false;
      throw new NixCommandError(
        `nix path-info ${path} ${describeExit(result, options.timeoutMs)}: ${trimOutput(result.stderr, 512)}`,
        result,
      );
    }
    try {
      const info = JSON.parse(result.stdout) as Array<{ path?: string; valid?: boolean }>;
      const entry = info.find((e) => e.path === path) ?? info[0];
      // Nix 2.8 exits 0 for an invalid path and marks it "valid": false.
      return entry !== undefined && entry.valid !== false;
    } catch {
      throw new NixCommandError(`nix path-info ${path} printed something that is not JSON`, result);
    }
  }

  /**
   * Makes `path` (with its closure) valid locally: from `cacheUrl` with `nix copy --from`, or, with
   * no cache, requires that it is already there. A path that is already valid needs no download.
   */
  async fetch(path: string, cacheUrl: string | null, options: CallOptions): Promise<"cache" | "local"> {
    const deadline = Date.now() + options.timeoutMs;
    const remaining = () => Math.max(1, deadline - Date.now());
    let valid: boolean;
    try {
      valid = await this.isValid(path, { ...options, timeoutMs: Math.min(remaining(), 60_000) });
    } catch (err) {
      if (options.signal?.aborted)
        throw new FetchError("interrupted", `fetching ${path} was interrupted (${FETCH_ADVICE.interrupted})`);
      throw err;
    }
    if (valid) {
      this.remember(path);
      return "local";
    }
    if (cacheUrl === null) {
      throw new FetchError(
        "missing",
        `${path} is not in the local store and no cache URL is configured (the control plane sent none and cacheUrl is unset); ` +
          "push it to this host or configure a cache",
      );
    }
    const result = await this.run(
      [
        "nix",
        "copy",
        // Nix remembers "not in this cache" for an hour and a narinfo it did find for 30 days.
        // A closure pushed by CI a minute after a failed attempt must be found on the next retry,
        // and one re-signed after a "lacks a valid signature" must not be refused from memory.
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
        "--option",
        "narinfo-cache-positive-ttl",
        "0",
        "--from",
        cacheUrl,
        path,
      ],
      { ...options, timeoutMs: remaining() },
    );
    if (result.code === 0) {
      // Trust but verify: nix copy exiting 0 must have made the path valid.
      if (await this.isValid(path, { ...options, timeoutMs: Math.min(remaining(), 60_000) })) {
        this.remember(path);
        return "cache";
      }
      throw new FetchError("other", `nix copy --from ${cacheUrl} exited 0 but ${path} is still not valid`);
    }
    const kind: FetchFailureKind = result.timedOut
      ? "timeout"
      : result.aborted
        ? "interrupted"
        : classifyFetchFailure(result.stderr);
    const stderr = trimOutput(result.stderr, 1536);
    throw new FetchError(
      kind,
      `nix copy --from ${cacheUrl} ${path} ${describeExit(result, options.timeoutMs)}` +
        (stderr ? `: ${stderr}` : "") +
        ` (${FETCH_ADVICE[kind]})`,
    );
  }

  /** `nix-env -p <profile> --set <path>`: a new profile generation pointing at `path`. */
  async setProfile(profile: string, path: string, options: CallOptions): Promise<void> {
    // nix-env needs the profile's directory (present on NixOS; created here for sandboxes).
    mkdirSync(dirname(profile), { recursive: true });
    await this.mustSucceed(
      ["nix-env", "-p", profile, "--set", path],
      options,
      `set profile ${profile} to ${path}`,
    );
  }

  /** `nix-env -p <profile> --switch-generation <n>`. */
  async switchProfileGeneration(profile: string, generation: number, options: CallOptions): Promise<void> {
    await this.mustSucceed(
      ["nix-env", "-p", profile, "--switch-generation", String(generation)],
      options,
      `switch profile ${profile} to generation ${generation}`,
    );
  }

  private remember(path: string): void {
    this.validated.push(path);
    if (this.validated.length > VALIDATED_KEPT) this.validated.shift();
  }

  /**
   * Pins `path` against garbage collection through the symlink `link` (an indirect root).
   *
   * Once `link` is registered (its entry in <state dir>/gcroots/auto, which `nix-store --add-root
   * --indirect` made on an earlier deploy), re-pointing the link is all Nix would do: it is done
   * here, atomically, without a process — when `path` is known valid (fetch() just found it so,
   * or a registered root beside `link` pins it), which `--realise` would otherwise make sure of.
   */
  async addGcRoot(link: string, path: string, options: CallOptions): Promise<void> {
    if (this.repointRoot(link, path)) return;
    await this.mustSucceed(
      ["nix-store", "--add-root", link, "--indirect", "--realise", path],
      options,
      `pin ${path} as a GC root at ${link}`,
    );
  }

  private repointRoot(link: string, path: string): boolean {
    if (!this.validated.includes(path) && !this.pinnedBeside(link, path)) return false;
    if (!this.registered(link)) return false;
    if (readlinkOr(link) === path) return true;
    const tmp = `${link}.tmp-${process.pid}`;
    try {
      try {
        symlinkSync(path, tmp);
      } catch (err) {
        // A leftover of a crash between the two calls: replace it.
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
        rmSync(tmp, { force: true });
        symlinkSync(path, tmp);
      }
      renameSync(tmp, link);
      return true;
    } catch {
      rmSync(tmp, { force: true });
      return false;
    }
  }

  /** Whether a registered root in `link`'s directory (previous, desired) pins `path`: then it is valid. */
  private pinnedBeside(link: string, path: string): boolean {
    let names: string[];
    try {
      names = readdirSync(dirname(link));
    } catch {
      return false;
    }
    return names.some((name) => {
      const other = join(dirname(link), name);
      return readlinkOr(other) === path && this.registered(other);
    });
  }

  /** Whether gcroots/auto holds an entry pointing at `link` (found once, then checked by one readlink). */
  private registered(link: string): boolean {
    const known = this.autoRoots.get(link);
    if (known !== undefined && readlinkOr(known) === link) return true;
    this.autoRoots.delete(link);
    const dir = join(this.env["NIX_STATE_DIR"] ?? "/nix/var/nix", "gcroots", "auto");
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return false;
    }
    for (const name of names) {
      const entry = join(dir, name);
      if (readlinkOr(entry) === link) {
        this.autoRoots.set(link, entry);
        return true;
      }
    }
    return false;
  }

  private async mustSucceed(argv: string[], options: CallOptions, what: string): Promise<void> {
    const result = await this.run(argv, options);
    if (result.code !== 0 || result.timedOut || result.aborted) {
      const stderr = trimOutput(result.stderr, 1024);
      throw new NixCommandError(
        `could not ${what}: ${argv[0]} ${describeExit(result, options.timeoutMs)}${stderr ? `: ${stderr}` : ""}`,
        result,
      );
    }
  }
}
