/**
 * Where the CLI finds the control plane and its credentials. Precedence, highest first:
 * command-line flags > NIXFLEET_* environment > the user file (~/.config/nixfleet/config.json,
 * which may hold an API key and must then be private to the user) > a project file
 * (.nixfleet.json, found by walking up from the working directory; relative paths in it are
 * relative to the file).
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { DURATION_HINT, parseDuration } from "../common/duration.js";
import { UsageError } from "./errors.js";

export type CliProtocol = "grpc" | "connect";

export interface Settings {
  /** The URLs as shown to people (`nixfleet config`, error messages): comma-separated. */
  controlPlaneUrl: string;
  /** Tried in this order, moving on when one is unreachable (client.ts). */
  controlPlaneUrls: string[];
  apiKey?: string | undefined;
  caCert?: string | undefined;
  clientCert?: string | undefined;
  clientKey?: string | undefined;
  protocol: CliProtocol;
  /** Per-call deadline in milliseconds (streams are not bounded by it). */
  timeoutMs: number;
  /** Which source each value came from, for `nixfleet config` and error messages. */
  sources: Partial<Record<keyof FileSettings, string>>;
}

/** The keys a settings file, the environment or flags may set. */
export interface FileSettings {
  /** One URL, several comma-separated, or (in a file) a JSON list of URLs. */
  controlPlaneUrl?: string | string[];
  apiKey?: string;
  caCert?: string;
  clientCert?: string;
  clientKey?: string;
  protocol?: string;
  timeout?: number | string;
}

const KEYS: (keyof FileSettings)[] = [
  "controlPlaneUrl",
  "apiKey",
  "caCert",
  "clientCert",
  "clientKey",
  "protocol",
  "timeout",
];
const PATH_KEYS = new Set<keyof FileSettings>(["caCert", "clientCert", "clientKey"]);

export const ENV_NAMES: Record<keyof FileSettings, string> = {
  controlPlaneUrl: "NIXFLEET_CONTROL_PLANE_URL",
  apiKey: "NIXFLEET_API_KEY",
  caCert: "NIXFLEET_CA_CERT",
  clientCert: "NIXFLEET_CLIENT_CERT",
  clientKey: "NIXFLEET_CLIENT_KEY",
  protocol: "NIXFLEET_PROTOCOL",
  timeout: "NIXFLEET_TIMEOUT",
};

export const DEFAULT_URL = "https://localhost:8443";
export const PROJECT_FILE = ".nixfleet.json";

export function userConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const base = env["XDG_CONFIG_HOME"] || join(env["HOME"] || homedir(), ".config");
  return join(base, "nixfleet", "config.json");
}

/** The nearest .nixfleet.json at or above `cwd`. */
export function findProjectFile(cwd: string): string | undefined {
  let dir = resolve(cwd);
  for (;;) {
    const candidate = join(dir, PROJECT_FILE);
    if (existsSync(candidate)) return candidate;
    const parent = dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

/** Reads a settings file; unknown keys and wrong types are usage errors naming key and file. */
export function readSettingsFile(path: string, opts: { private?: boolean } = {}): FileSettings {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new UsageError(`cannot read settings file ${path}: ${(err as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new UsageError(`settings file ${path} must hold a JSON object`);
  }
  const out: FileSettings = {};
  for (const [key, value] of Object.entries(raw)) {
    if (!KEYS.includes(key as keyof FileSettings)) {
      throw new UsageError(`settings file ${path}: unknown key "${key}" (known: ${KEYS.join(", ")})`);
    }
    const urlList =
      key === "controlPlaneUrl" && Array.isArray(value) && value.every((u) => typeof u === "string");
    if (
      !urlList &&
      (key === "timeout" ? typeof value !== "number" && typeof value !== "string" : typeof value !== "string")
    ) {
      throw new UsageError(
        `settings file ${path}: "${key}" must be a ${key === "timeout" ? "number" : key === "controlPlaneUrl" ? "string or a list of strings" : "string"}`,
      );
    }
    let v = value as string;
    if (PATH_KEYS.has(key as keyof FileSettings) && !isAbsolute(v)) v = resolve(dirname(path), v);
    (out as Record<string, unknown>)[key] = v;
  }
  if (opts.private && out.apiKey !== undefined) {
    const mode = statSync(path).mode & 0o777;
    if (mode & 0o077) {
      throw new UsageError(
        `settings file ${path} holds an API key but is readable by others (mode ${mode.toString(8)}); run: chmod 600 ${path}`,
      );
    }
  }
  return out;
}

function envSettings(env: NodeJS.ProcessEnv): FileSettings {
  const out: FileSettings = {};
  for (const key of KEYS) {
    const value = env[ENV_NAMES[key]];
    if (value !== undefined && value !== "") (out as Record<string, unknown>)[key] = value;
  }
  return out;
}

const FLAG_NAMES: Record<keyof FileSettings, string> = {
  controlPlaneUrl: "--control-plane-url",
  apiKey: "--api-key",
  caCert: "--ca-cert",
  clientCert: "--client-cert",
  clientKey: "--client-key",
  protocol: "--protocol",
  timeout: "--timeout",
};

/**
 * Where a setting came from, in the words its author would look for: the flag, the environment
 * variable, or the key and the file (`"caCert" in /srv/app/.nixfleet.json`).
 */
export function settingOrigin(settings: Pick<Settings, "sources">, key: keyof FileSettings): string {
  const source = settings.sources[key];
  if (source === undefined || source === "flag") return FLAG_NAMES[key];
  if (source === ENV_NAMES[key]) return source;
  return `"${key}" in ${source}`;
}

export interface SettingsInputs {
  flags: FileSettings;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** An explicit --config file replaces the user and project files. */
  configFile?: string | undefined;
}

export function resolveSettings(inputs: SettingsInputs): Settings {
  const env = inputs.env ?? process.env;
  const layers: [string, FileSettings][] = [];
  if (inputs.configFile) {
    layers.push([inputs.configFile, readSettingsFile(inputs.configFile, { private: true })]);
  } else {
    const project = findProjectFile(inputs.cwd ?? process.cwd());
    if (project) layers.push([project, readSettingsFile(project, { private: true })]);
    const user = userConfigPath(env);
    if (existsSync(user)) layers.push([user, readSettingsFile(user, { private: true })]);
  }
  layers.push(["environment", envSettings(env)]);
  layers.push(["flag", inputs.flags]);

  const merged: FileSettings = {};
  const sources: Settings["sources"] = {};
  for (const [source, layer] of layers) {
    for (const key of KEYS) {
      const value = layer[key];
      if (value !== undefined && value !== "") {
        (merged as Record<string, unknown>)[key] = value;
        sources[key] = source === "environment" ? ENV_NAMES[key] : source === "flag" ? "flag" : source;
      }
    }
  }

  const from = (key: keyof FileSettings) => settingOrigin({ sources }, key);
  const controlPlaneUrls = parseUrls(merged.controlPlaneUrl ?? DEFAULT_URL, from("controlPlaneUrl"));
  const protocol = merged.protocol ?? "grpc";
  if (protocol !== "grpc" && protocol !== "connect") {
    throw new UsageError(`${from("protocol")}: must be "grpc" or "connect", got ${JSON.stringify(protocol)}`);
  }
  const timeout = parseDuration(merged.timeout ?? 30);
  if (timeout === undefined || timeout <= 0) {
    throw new UsageError(
      `${from("timeout")}: must be a positive duration (${DURATION_HINT}), got ${JSON.stringify(merged.timeout)}`,
    );
  }
  if (Boolean(merged.clientCert) !== Boolean(merged.clientKey)) {
    throw new UsageError(
      "client certificate and key must be given together (--client-cert and --client-key)",
    );
  }
  return {
    controlPlaneUrl: controlPlaneUrls.join(","),
    controlPlaneUrls,
    apiKey: merged.apiKey,
    caCert: merged.caCert,
    clientCert: merged.clientCert,
    clientKey: merged.clientKey,
    protocol,
    timeoutMs: Math.round(timeout * 1000),
    sources,
  };
}

/** More URLs than any HA layout needs, as for the agent. */
const MAX_URLS = 16;

/**
 * The control plane's URLs: one, several comma-separated (flag, variable, file) or a JSON list
 * (file), normalised (no trailing slash) and checked one by one; errors name where the value came
 * from and, for a list, the entry.
 */
function parseUrls(given: string | string[], from: string): string[] {
  const entries = (Array.isArray(given) ? given : given.split(",")).map((u) => u.trim()).filter(Boolean);
  if (entries.length === 0) throw new UsageError(`${from}: no control plane URL given`);
  if (entries.length > MAX_URLS)
    throw new UsageError(`${from}: ${entries.length} control plane URLs; at most ${MAX_URLS} are allowed`);
  const urls: string[] = [];
  for (const entry of entries) {
    const text = entry.replace(/\/+$/, "");
    const which = entries.length > 1 ? ` ${JSON.stringify(entry)}` : "";
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new UsageError(`${from}: control plane URL ${JSON.stringify(text)} is not a URL`);
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      throw new UsageError(
        `${from}: control plane URL${which} must start with https:// (or http:// for a dev control plane), got ${text}`,
      );
    }
    if (urls.includes(text)) throw new UsageError(`${from}: control plane URL ${text} is listed twice`);
    urls.push(text);
  }
  return urls;
}
