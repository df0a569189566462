/** Parsing of flag values into request fields; every failure is a UsageError naming the flag. */

import { DURATION_HINT, parseDuration } from "../common/duration.js";
import { machineIdProblem, tagsProblem } from "../common/ids.js";
import { storePathProblem } from "../common/store-path.js";
import { UsageError } from "./errors.js";

export function splitList(value: string | undefined): string[] {
  if (!value) return [];
  return value
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

export function parseTags(value: string | undefined, flag = "--tags"): string[] {
  const tags = splitList(value);
  const problem = tagsProblem(tags);
  if (problem) throw new UsageError(`${flag}: ${problem.reason}`);
  return tags;
}

export function parseMachineId(value: string, what = "machine id"): string {
  const problem = machineIdProblem(value);
  if (problem) throw new UsageError(`${what}: ${problem}`);
  return value;
}

export function parseStorePathArg(value: string, what: string): string {
  const problem = storePathProblem(value);
  if (problem) throw new UsageError(`${what} ${JSON.stringify(value.slice(0, 120))} ${problem}`);
  return value;
}

/** Whole seconds from "300", "300s", "5m", "1h" (the one parser, src/common/duration.ts). */
export function parseSeconds(value: string, flag: string, max = 86400): number {
  const s = parseDuration(value);
  if (s === undefined || !Number.isInteger(s) || s < 0 || s > max) {
    throw new UsageError(
      `${flag} must be a whole number of seconds (${DURATION_HINT}) up to ${max}s; got ${JSON.stringify(value)}`,
    );
  }
  return s;
}

export function parsePositiveInt(value: string, flag: string, max: number): number {
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > max) {
    throw new UsageError(`${flag} must be a whole number from 1 to ${max}; got ${JSON.stringify(value)}`);
  }
  return Number(value);
}

/** "1,25%,100%" → ["1","25%","100%"]; each entry a positive count or a 1–100 percentage. */
export function parseBatchSizes(value: string): string[] {
  const sizes = splitList(value);
  if (sizes.length === 0) throw new UsageError("--batch-size needs at least one size, e.g. 1,25%,100%");
  sizes.forEach((s, i) => {
    const pct = /^(\d+)%$/.exec(s);
    if (pct ? Number(pct[1]) < 1 || Number(pct[1]) > 100 : !/^\d+$/.test(s) || Number(s) < 1) {
      throw new UsageError(
        `--batch-size entry ${i + 1} (${JSON.stringify(s)}) must be a count ≥ 1 or a percentage 1%–100%`,
      );
    }
  });
  return sizes;
}

/** "0", "2" or "10%". */
export function parseThreshold(value: string): string {
  const v = value.trim();
  const pct = /^(\d+)%$/.exec(v);
  if (pct ? Number(pct[1]) > 100 : !/^\d+$/.test(v)) {
    throw new UsageError(
      `--failure-threshold must be a count (0, 2) or a percentage (10%); got ${JSON.stringify(value)}`,
    );
  }
  return v;
}

export interface EntryArg {
  hostname: string;
  storePath: string;
}

/** "web-01=/nix/store/…" */
export function parseEntry(value: string): EntryArg {
  const eq = value.indexOf("=");
  if (eq <= 0)
    throw new UsageError(
      `--entry must look like host=/nix/store/<hash>-<name>; got ${JSON.stringify(value)}`,
    );
  const hostname = parseMachineId(value.slice(0, eq), `--entry host ${JSON.stringify(value.slice(0, eq))}`);
  const storePath = parseStorePathArg(value.slice(eq + 1), `--entry ${hostname}: store path`);
  return { hostname, storePath };
}

/** Glob with * and ? over host names; a comma list matches any of its globs. */
export function hostMatcher(globs: string): (host: string) => boolean {
  const res = splitList(globs).map(
    (g) =>
      new RegExp(
        `^${g
          .replace(/[.+^${}()|[\]\\]/g, "\\$&")
          .replace(/\*/g, ".*")
          .replace(/\?/g, ".")}$`,
      ),
  );
  if (res.length === 0) throw new UsageError("--hosts needs at least one host name or glob");
  return (host) => res.some((re) => re.test(host));
}
