/** A configuration problem: which key, from where (file, variable or flag), and why. */
import type { z } from "zod";

export class ConfigError extends Error {
  constructor(
    readonly key: string,
    readonly source: string,
    readonly reason: string,
  ) {
    super(`invalid agent configuration: ${key || "(top level)"} (from ${source}): ${reason}`);
    this.name = "ConfigError";
  }
}

/** ["healthChecks", "http", 0, "url"] → "healthChecks.http[0].url". */
export function keyOf(path: readonly PropertyKey[]): string {
  return path.reduce<string>((key, part) => {
    if (typeof part === "number") return `${key}[${part}]`;
    return key ? `${key}.${String(part)}` : String(part);
  }, "");
}

/**
 * The first problem zod found, as a ConfigError. One at a time on purpose: the first one is
 * usually the cause of the rest (a wrong type makes every rule about that key moot), and the
 * operator fixes and restarts anyway.
 */
export function configErrorFrom(error: z.ZodError, sourceOf: (key: string) => string): ConfigError {
  const issue = error.issues[0];
  if (!issue) return new ConfigError("", sourceOf(""), "invalid");
  const path = issue.code === "unrecognized_keys" ? [...issue.path, issue.keys[0] ?? ""] : issue.path;
  const key = keyOf(path);
  return new ConfigError(key, sourceOf(key), issue.message);
}
