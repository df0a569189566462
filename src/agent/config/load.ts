/**
 * The configuration as the agent starts with it: the JSON file, overridden by `NIXFLEET_*`
 * variables, overridden by flags. Each layer writes into one JSON object which the schema then
 * validates once, remembering which keys a variable or flag set so that errors name it.
 */
import { readFileSync } from "node:fs";
import { ConfigError } from "./errors.js";
import { describe } from "./fields.js";
import { parseWithSources } from "./parse.js";
import type { AgentConfig } from "./schema.js";
import { OPTIONS } from "./table.js";

export const DEFAULT_CONFIG_PATH = "/etc/nixfleet/agent.json";

export interface LoadOptions {
  /** Path given with --config; when absent, NIXFLEET_CONFIG or the default path. */
  configPath?: string | undefined;
  /** Flag values by option key (e.g. "pollInterval": "30s"), as strings or booleans. */
  flags?: Record<string, string | boolean | undefined>;
  env?: NodeJS.ProcessEnv;
}

export interface LoadedConfig {
  config: AgentConfig;
  /** The file read, or undefined when none existed at the default path. */
  file: string | undefined;
  /** Where each overridden key came from, for start-up logging. */
  overrides: Record<string, string>;
}

function setPath(obj: Record<string, unknown>, key: string, value: unknown): void {
  const parts = key.split(".");
  let cur = obj;
  for (const part of parts.slice(0, -1)) {
    const next = cur[part];
    if (typeof next !== "object" || next === null || Array.isArray(next)) cur[part] = {};
    cur = cur[part] as Record<string, unknown>;
  }
  cur[parts[parts.length - 1]!] = value;
}

function readConfigFile(path: string, explicit: boolean): unknown | undefined {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" && !explicit) return undefined;
    const why = code === "ENOENT" ? "file does not exist" : code === "EACCES" ? "permission denied" : code;
    throw new ConfigError("", path, `cannot read the configuration file: ${why ?? (err as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ConfigError("", path, `is not valid JSON: ${(err as Error).message}`);
  }
}

/**
 * Reads the file (the default path may be absent; an explicit one must exist), applies
 * `NIXFLEET_*` variables and then flags, and parses the result. Errors name the key and whether
 * it came from the file, a variable or a flag.
 */
export function loadAgentConfig(options: LoadOptions = {}): LoadedConfig {
  const env = options.env ?? process.env;
  const explicit = options.configPath ?? env["NIXFLEET_CONFIG"];
  const path = explicit ?? DEFAULT_CONFIG_PATH;
  const fromFile = readConfigFile(path, explicit !== undefined);
  if (
    fromFile !== undefined &&
    (typeof fromFile !== "object" || fromFile === null || Array.isArray(fromFile))
  )
    throw new ConfigError("", path, `must contain a JSON object, got ${describe(fromFile)}`);
  const raw = structuredClone((fromFile ?? {}) as Record<string, unknown>);
  const overrides: Record<string, string> = {};
  for (const spec of OPTIONS) {
    const text = env[spec.env];
    if (text === undefined) continue;
    setPath(raw, spec.key, spec.fromText(text));
    overrides[spec.key] = `environment variable ${spec.env}`;
  }
  for (const spec of OPTIONS) {
    const value = options.flags?.[spec.key];
    if (value === undefined) continue;
    setPath(raw, spec.key, typeof value === "boolean" ? value : spec.fromText(value));
    overrides[spec.key] = `flag --${spec.flag}`;
  }
  const fileSource = fromFile === undefined ? "defaults (no configuration file)" : path;
  const sourceOf = (key: string) => {
    if (overrides[key]) return overrides[key];
    // "tags[2]" came from wherever "tags" came from.
    const base = key.replace(/\[\d+\].*$/, "");
    return overrides[base] ?? fileSource;
  };
  return {
    config: parseWithSources(raw, sourceOf),
    file: fromFile === undefined ? undefined : path,
    overrides,
  };
}
