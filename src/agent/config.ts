/**
 * The agent's configuration: one JSON file (written by the NixOS module, keys are the module's
 * option names), overridden by `NIXFLEET_*` environment variables, overridden by flags.
 *
 * Parsing is strict on purpose: the agent runs as root and acts on what it reads, so an unknown
 * key (a typo, a snake_case spelling, an option of a newer version) is an error naming the key
 * and where it came from, never silently ignored. `parseAgentConfig` does no I/O so another
 * program (the NixOS module's tests) can check the JSON the module renders.
 */
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { machineIdProblem, normalizeTags, tagsProblem } from "../common/ids.js";
import { isLogLevel, LOG_LEVELS } from "../common/logger.js";
import { cacheUrlProblem } from "./cache-url.js";

export const DEFAULT_CONFIG_PATH = "/etc/nixfleet/agent.json";

export const PROTOCOLS = ["grpc", "connect", "connect-json"] as const;
export type Protocol = (typeof PROTOCOLS)[number];

export const ACTIVATION_MODES = ["systemd-run", "direct"] as const;
export type ActivationMode = (typeof ACTIVATION_MODES)[number];

export interface SystemdCheckConfig {
  units: string[];
  /** Seconds one `systemctl is-active` may take. */
  timeout: number;
  /** Seconds between runs in periodic health reports. */
  interval: number;
}

export interface HttpCheckConfig {
  url: string;
  expectedStatus: number;
  timeout: number;
  interval: number;
}

export interface CommandCheckConfig {
  name: string;
  command: string;
  timeout: number;
  interval: number;
}

export interface HealthChecksConfig {
  systemd: SystemdCheckConfig[];
  http: HttpCheckConfig[];
  command: CommandCheckConfig[];
}

/** Every duration is in seconds (fractions allowed), as in the NixOS module. */
export interface AgentConfig {
  controlPlaneUrl: string;
  machineId: string;
  tags: string[];
  pollInterval: number;
  retryInterval: number;
  healthInterval: number;
  healthChecks: HealthChecksConfig;
  metricsPort: number | null;
  metricsAddress: string;
  dbPath: string;
  tls: { caCert: string | null; clientCert: string | null; clientKey: string | null };
  allowInsecure: boolean;
  cacheUrl: string | null;
  dryRun: boolean;
  protocol: Protocol;
  verifyTimeout: number;
  activationTimeout: number;
  activation: ActivationMode;
  fetchTimeout: number;
  requestTimeout: number;
  heartbeatInterval: number;
  logLevel: string;
  paths: { currentSystem: string; systemProfile: string; switchLock: string };
}

/** A configuration problem: which key, from where, and why. */
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

// ----------------------------------------------------------------------------- option table

type Kind = "string" | "duration" | "bool" | "port" | "tags" | "enum" | "nullableString" | "level";

interface OptionSpec {
  /** Dotted key in the JSON file. */
  key: string;
  /** Flag without the leading dashes. */
  flag: string;
  env: string;
  kind: Kind;
  choices?: readonly string[];
  help: string;
}

/**
 * Every scalar option, with its flag and environment variable. Health checks are lists of
 * records and exist only in the file.
 */
export const OPTIONS: readonly OptionSpec[] = [
  {
    key: "controlPlaneUrl",
    flag: "control-plane-url",
    env: "NIXFLEET_CONTROL_PLANE_URL",
    kind: "string",
    help: "control plane base URL, https://host:port (required)",
  },
  {
    key: "machineId",
    flag: "machine-id",
    env: "NIXFLEET_MACHINE_ID",
    kind: "string",
    help: "this machine's id; must equal the client certificate CN (default: host name)",
  },
  {
    key: "tags",
    flag: "tags",
    env: "NIXFLEET_TAGS",
    kind: "tags",
    help: "comma-separated tags reported to the control plane (default: none)",
  },
  {
    key: "pollInterval",
    flag: "poll-interval",
    env: "NIXFLEET_POLL_INTERVAL",
    kind: "duration",
    help: "steady-state poll period (default 60s)",
  },
  {
    key: "retryInterval",
    flag: "retry-interval",
    env: "NIXFLEET_RETRY_INTERVAL",
    kind: "duration",
    help: "delay after a failed cycle (default 30s)",
  },
  {
    key: "healthInterval",
    flag: "health-interval",
    env: "NIXFLEET_HEALTH_INTERVAL",
    kind: "duration",
    help: "period of health reports (default 60s)",
  },
  {
    key: "metricsPort",
    flag: "metrics-port",
    env: "NIXFLEET_METRICS_PORT",
    kind: "port",
    help: "Prometheus listener port; 0 = any free port (logged); unset = no listener",
  },
  {
    key: "metricsAddress",
    flag: "metrics-address",
    env: "NIXFLEET_METRICS_ADDRESS",
    kind: "string",
    help: "address the metrics listener binds (default 0.0.0.0)",
  },
  {
    key: "dbPath",
    flag: "db-path",
    env: "NIXFLEET_DB_PATH",
    kind: "string",
    help: "SQLite journal (default /var/lib/nixfleet/state.db)",
  },
  {
    key: "tls.caCert",
    flag: "ca-cert",
    env: "NIXFLEET_CA_CERT",
    kind: "nullableString",
    help: "PEM CA bundle that signs the control plane's certificate",
  },
  {
    key: "tls.clientCert",
    flag: "client-cert",
    env: "NIXFLEET_CLIENT_CERT",
    kind: "nullableString",
    help: "PEM client certificate (CN = machine id)",
  },
  {
    key: "tls.clientKey",
    flag: "client-key",
    env: "NIXFLEET_CLIENT_KEY",
    kind: "nullableString",
    help: "PEM private key of the client certificate",
  },
  {
    key: "allowInsecure",
    flag: "allow-insecure",
    env: "NIXFLEET_ALLOW_INSECURE",
    kind: "bool",
    help: "allow a plain http:// control plane (development only)",
  },
  {
    key: "cacheUrl",
    flag: "cache-url",
    env: "NIXFLEET_CACHE_URL",
    kind: "nullableString",
    help: "binary cache used when the control plane names none",
  },
  {
    key: "dryRun",
    flag: "dry-run",
    env: "NIXFLEET_DRY_RUN",
    kind: "bool",
    help: "check and fetch, never apply",
  },
  {
    key: "protocol",
    flag: "protocol",
    env: "NIXFLEET_PROTOCOL",
    kind: "enum",
    choices: PROTOCOLS,
    help: "grpc (default, HTTP/2 + Session), connect (binary, HTTP/2 + Session), connect-json (HTTP/1.1, polling + Watch)",
  },
  {
    key: "verifyTimeout",
    flag: "verify-timeout",
    env: "NIXFLEET_VERIFY_TIMEOUT",
    kind: "duration",
    help: "how long health checks may take to pass after a switch (default 120s)",
  },
  {
    key: "activationTimeout",
    flag: "activation-timeout",
    env: "NIXFLEET_ACTIVATION_TIMEOUT",
    kind: "duration",
    help: "a switch running longer fails and is rolled back (default 600s)",
  },
  {
    key: "activation",
    flag: "activation",
    env: "NIXFLEET_ACTIVATION",
    kind: "enum",
    choices: ACTIVATION_MODES,
    help: "systemd-run (default: transient unit) or direct (detached process group)",
  },
  {
    key: "fetchTimeout",
    flag: "fetch-timeout",
    env: "NIXFLEET_FETCH_TIMEOUT",
    kind: "duration",
    help: "hard limit for nix copy / nix path-info (default 600s)",
  },
  {
    key: "requestTimeout",
    flag: "request-timeout",
    env: "NIXFLEET_REQUEST_TIMEOUT",
    kind: "duration",
    help: "limit for one unary call to the control plane (default 30s)",
  },
  {
    key: "heartbeatInterval",
    flag: "heartbeat-interval",
    env: "NIXFLEET_HEARTBEAT_INTERVAL",
    kind: "duration",
    help: "Session heartbeat period (default 30s)",
  },
  {
    key: "logLevel",
    flag: "log-level",
    env: "NIXFLEET_LOG_LEVEL",
    kind: "level",
    help: `log level: ${LOG_LEVELS.join(", ")} (default info)`,
  },
  {
    key: "paths.currentSystem",
    flag: "current-system",
    env: "NIXFLEET_CURRENT_SYSTEM",
    kind: "string",
    help: "the current-system symlink (default /run/current-system)",
  },
  {
    key: "paths.systemProfile",
    flag: "system-profile",
    env: "NIXFLEET_SYSTEM_PROFILE",
    kind: "string",
    help: "the system profile (default /nix/var/nix/profiles/system)",
  },
  {
    key: "paths.switchLock",
    flag: "switch-lock",
    env: "NIXFLEET_SWITCH_LOCK",
    kind: "string",
    help: "switch-to-configuration's lock file (default /run/nixos/switch-to-configuration.lock)",
  },
];

export const DEFAULTS = {
  tags: [] as string[],
  pollInterval: 60,
  retryInterval: 30,
  healthInterval: 60,
  metricsPort: null,
  metricsAddress: "0.0.0.0",
  dbPath: "/var/lib/nixfleet/state.db",
  allowInsecure: false,
  cacheUrl: null,
  dryRun: false,
  protocol: "grpc" as Protocol,
  verifyTimeout: 120,
  activationTimeout: 600,
  activation: "systemd-run" as ActivationMode,
  fetchTimeout: 600,
  requestTimeout: 30,
  heartbeatInterval: 30,
  logLevel: "info",
  currentSystem: "/run/current-system",
  systemProfile: "/nix/var/nix/profiles/system",
  switchLock: "/run/nixos/switch-to-configuration.lock",
  http: { expectedStatus: 200, timeout: 3, interval: 5 },
  command: { timeout: 5, interval: 10 },
  systemd: { timeout: 5, interval: 10 },
} as const;

/** The longest duration we accept anywhere: a week, far beyond any sane setting. */
const MAX_DURATION_SECONDS = 7 * 24 * 3600;

// ----------------------------------------------------------------------------- value parsing

type SourceOf = (key: string) => string;

class Reader {
  constructor(private readonly sourceOf: SourceOf) {}

  fail(key: string, reason: string): never {
    throw new ConfigError(key, this.sourceOf(key), reason);
  }

  object(key: string, value: unknown, allowed: readonly string[]): Record<string, unknown> {
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      this.fail(key, `must be a JSON object, got ${describe(value)}`);
    }
    const obj = value as Record<string, unknown>;
    for (const k of Object.keys(obj)) {
      if (!allowed.includes(k)) {
        const full = key ? `${key}.${k}` : k;
        const camel = k.replace(/[_-]([a-z])/g, (_m, c: string) => c.toUpperCase());
        const hint =
          camel !== k && allowed.includes(camel)
            ? `; did you mean "${camel}"?`
            : `; known keys: ${allowed.join(", ")}`;
        this.fail(full, `unknown key${hint}`);
      }
    }
    return obj;
  }

  string(key: string, value: unknown): string {
    if (typeof value !== "string") this.fail(key, `must be a string, got ${describe(value)}`);
    if (value.length === 0) this.fail(key, "must not be empty");
    if (value.length > 4096) this.fail(key, "is longer than 4096 characters");
    return value;
  }

  nullableString(key: string, value: unknown): string | null {
    if (value === null || value === undefined) return null;
    return this.string(key, value);
  }

  bool(key: string, value: unknown): boolean {
    if (typeof value !== "boolean") this.fail(key, `must be true or false, got ${describe(value)}`);
    return value;
  }

  /** Seconds as a number, or a string with a unit: "500ms", "30s", "5m", "1h". */
  duration(key: string, value: unknown, { allowZero = false } = {}): number {
    const seconds = typeof value === "string" ? parseDurationString(value) : value;
    if (typeof seconds !== "number" || !Number.isFinite(seconds)) {
      this.fail(key, `must be a number of seconds or a duration like "30s", "5m", got ${describe(value)}`);
    }
    if (seconds < 0 || (!allowZero && seconds === 0)) {
      this.fail(key, `must be ${allowZero ? "zero or more" : "more than zero"} seconds, got ${seconds}`);
    }
    if (seconds > MAX_DURATION_SECONDS)
      this.fail(key, `must be at most ${MAX_DURATION_SECONDS} seconds (a week)`);
    return seconds;
  }

  integer(key: string, value: unknown, min: number, max: number): number {
    if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
      this.fail(key, `must be an integer from ${min} to ${max}, got ${describe(value)}`);
    }
    return value;
  }

  choice<T extends string>(key: string, value: unknown, choices: readonly T[]): T {
    if (typeof value !== "string" || !(choices as readonly string[]).includes(value)) {
      this.fail(key, `must be one of ${choices.join(", ")}, got ${describe(value)}`);
    }
    return value as T;
  }

  list(key: string, value: unknown): unknown[] {
    if (!Array.isArray(value)) this.fail(key, `must be a JSON array, got ${describe(value)}`);
    return value;
  }
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** Parses "30", "30s", "1.5s", "500ms", "5m", "2h"; returns seconds or undefined. */
export function parseDurationString(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (!m) return undefined;
  const n = Number(m[1]);
  switch (m[2]) {
    case "ms":
      return n / 1000;
    case "m":
      return n * 60;
    case "h":
      return n * 3600;
    default:
      return n;
  }
}

function absolutePath(r: Reader, key: string, value: unknown): string {
  const path = r.string(key, value);
  if (!path.startsWith("/")) r.fail(key, `must be an absolute path, got ${describe(path)}`);
  if (path.includes("\0")) r.fail(key, "must not contain NUL");
  return path;
}

function nullablePath(r: Reader, key: string, value: unknown): string | null {
  if (value === null || value === undefined) return null;
  return absolutePath(r, key, value);
}

// ----------------------------------------------------------------------------- the parser

const TOP_KEYS = [
  "controlPlaneUrl",
  "machineId",
  "tags",
  "pollInterval",
  "retryInterval",
  "healthInterval",
  "healthChecks",
  "metricsPort",
  "metricsAddress",
  "dbPath",
  "tls",
  "allowInsecure",
  "cacheUrl",
  "dryRun",
  "protocol",
  "verifyTimeout",
  "activationTimeout",
  "activation",
  "fetchTimeout",
  "requestTimeout",
  "heartbeatInterval",
  "logLevel",
  "paths",
] as const;

function parseControlPlaneUrl(r: Reader, value: unknown, allowInsecure: boolean): string {
  const key = "controlPlaneUrl";
  if (value === undefined || value === null) {
    r.fail(key, "is required (e.g. https://fleet.example.com:8443)");
  }
  const text = r.string(key, value);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    r.fail(key, `is not a URL: ${describe(text)}`);
  }
  if (url.protocol === "http:") {
    if (!allowInsecure)
      r.fail(key, "uses plain http://; use https:// or set allowInsecure (development only)");
  } else if (url.protocol !== "https:") {
    r.fail(key, `must be an https:// URL, got scheme ${url.protocol}`);
  }
  if (url.search || url.hash) r.fail(key, "must not contain a query string or fragment");
  if (url.username || url.password)
    r.fail(key, "must not contain credentials; the agent authenticates with mTLS");
  // Connect appends "/nixfleet.v1.AgentService/Method"; a trailing slash would double it.
  return url.toString().replace(/\/+$/, "");
}

function parseHealthChecks(r: Reader, value: unknown): HealthChecksConfig {
  const out: HealthChecksConfig = { systemd: [], http: [], command: [] };
  if (value === undefined || value === null) return out;
  const obj = r.object("healthChecks", value, ["systemd", "http", "command"]);
  const names = new Set<string>();
  const unique = (key: string, name: string) => {
    if (names.has(name)) r.fail(key, `check name ${describe(name)} is used twice; names must be unique`);
    names.add(name);
  };
  if (obj["systemd"] !== undefined) {
    for (const [i, item] of r.list("healthChecks.systemd", obj["systemd"]).entries()) {
      const key = `healthChecks.systemd[${i}]`;
      const e = r.object(key, item, ["units", "timeout", "interval"]);
      const units = r.list(`${key}.units`, e["units"] ?? []).map((u, j) => {
        const unit = r.string(`${key}.units[${j}]`, u);
        if (!/^[A-Za-z0-9:_.@\\-]+$/.test(unit) || unit.startsWith("-")) {
          r.fail(`${key}.units[${j}]`, `is not a systemd unit name: ${describe(unit)}`);
        }
        unique(`${key}.units[${j}]`, unit);
        return unit;
      });
      if (units.length === 0) r.fail(`${key}.units`, "must list at least one unit");
      out.systemd.push({
        units,
        timeout:
          e["timeout"] === undefined ? DEFAULTS.systemd.timeout : r.duration(`${key}.timeout`, e["timeout"]),
        interval:
          e["interval"] === undefined
            ? DEFAULTS.systemd.interval
            : r.duration(`${key}.interval`, e["interval"]),
      });
    }
  }
  if (obj["http"] !== undefined) {
    for (const [i, item] of r.list("healthChecks.http", obj["http"]).entries()) {
      const key = `healthChecks.http[${i}]`;
      const e = r.object(key, item, ["url", "expectedStatus", "timeout", "interval"]);
      const url = r.string(`${key}.url`, e["url"]);
      // The URL is the check's name in health reports, which allow 512 characters.
      if (url.length > 512) r.fail(`${key}.url`, "must be at most 512 characters");
      let parsed: URL;
      try {
        parsed = new URL(url);
      } catch {
        r.fail(`${key}.url`, `is not a URL: ${describe(url)}`);
      }
      if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
        r.fail(`${key}.url`, `must be an http:// or https:// URL, got ${describe(url)}`);
      }
      unique(`${key}.url`, url);
      out.http.push({
        url,
        expectedStatus:
          e["expectedStatus"] === undefined
            ? DEFAULTS.http.expectedStatus
            : r.integer(`${key}.expectedStatus`, e["expectedStatus"], 100, 599),
        timeout:
          e["timeout"] === undefined ? DEFAULTS.http.timeout : r.duration(`${key}.timeout`, e["timeout"]),
        interval:
          e["interval"] === undefined ? DEFAULTS.http.interval : r.duration(`${key}.interval`, e["interval"]),
      });
    }
  }
  if (obj["command"] !== undefined) {
    for (const [i, item] of r.list("healthChecks.command", obj["command"]).entries()) {
      const key = `healthChecks.command[${i}]`;
      const e = r.object(key, item, ["name", "command", "timeout", "interval"]);
      const name = r.string(`${key}.name`, e["name"]);
      if (name.length > 128) r.fail(`${key}.name`, "must be at most 128 characters");
      unique(`${key}.name`, name);
      out.command.push({
        name,
        command: r.string(`${key}.command`, e["command"]),
        timeout:
          e["timeout"] === undefined ? DEFAULTS.command.timeout : r.duration(`${key}.timeout`, e["timeout"]),
        interval:
          e["interval"] === undefined
            ? DEFAULTS.command.interval
            : r.duration(`${key}.interval`, e["interval"]),
      });
    }
  }
  return out;
}

function parseWithSources(raw: unknown, sourceOf: SourceOf): AgentConfig {
  const r = new Reader(sourceOf);
  const obj = r.object("", raw ?? {}, TOP_KEYS);
  const opt = <T>(key: string, parse: (v: unknown) => T, dflt: T): T => {
    const v = obj[key];
    return v === undefined ? dflt : parse(v);
  };
  const allowInsecure = opt("allowInsecure", (v) => r.bool("allowInsecure", v), DEFAULTS.allowInsecure);

  let machineId: string;
  if (obj["machineId"] === undefined || obj["machineId"] === null) {
    machineId = hostname();
    const problem = machineIdProblem(machineId);
    if (problem) r.fail("machineId", `is not set and the host name cannot be used: ${problem}`);
  } else {
    machineId = r.string("machineId", obj["machineId"]);
    const problem = machineIdProblem(machineId);
    if (problem) r.fail("machineId", problem);
  }

  const tags = opt(
    "tags",
    (v) => {
      const list = r.list("tags", v).map((t, i) => r.string(`tags[${i}]`, t));
      const problem = tagsProblem(list);
      if (problem) r.fail(`tags[${problem.index}]`, problem.reason);
      return normalizeTags(list);
    },
    [...DEFAULTS.tags],
  );

  const tlsRaw = obj["tls"] === undefined || obj["tls"] === null ? {} : obj["tls"];
  const tlsObj = r.object("tls", tlsRaw, ["caCert", "clientCert", "clientKey"]);
  const tls = {
    caCert: nullablePath(r, "tls.caCert", tlsObj["caCert"]),
    clientCert: nullablePath(r, "tls.clientCert", tlsObj["clientCert"]),
    clientKey: nullablePath(r, "tls.clientKey", tlsObj["clientKey"]),
  };
  if (Boolean(tls.clientCert) !== Boolean(tls.clientKey)) {
    const [given, missing] = tls.clientCert
      ? ["tls.clientCert", "tls.clientKey"]
      : ["tls.clientKey", "tls.clientCert"];
    r.fail(missing, `is not set but ${given} is: give both or neither`);
  }

  const controlPlaneUrl = parseControlPlaneUrl(r, obj["controlPlaneUrl"], allowInsecure);
  if (controlPlaneUrl.startsWith("https:") === false && (tls.clientCert || tls.caCert)) {
    // Certificates over plain HTTP would silently not be used: an operator who set them
    // believes the link is authenticated, so refuse instead.
    r.fail("controlPlaneUrl", "is http:// but TLS files are configured; use https:// so they are used");
  }

  const pathsRaw = obj["paths"] === undefined || obj["paths"] === null ? {} : obj["paths"];
  const pathsObj = r.object("paths", pathsRaw, ["currentSystem", "systemProfile", "switchLock"]);
  const paths = {
    currentSystem:
      pathsObj["currentSystem"] === undefined
        ? DEFAULTS.currentSystem
        : absolutePath(r, "paths.currentSystem", pathsObj["currentSystem"]),
    systemProfile:
      pathsObj["systemProfile"] === undefined
        ? DEFAULTS.systemProfile
        : absolutePath(r, "paths.systemProfile", pathsObj["systemProfile"]),
    switchLock:
      pathsObj["switchLock"] === undefined
        ? DEFAULTS.switchLock
        : absolutePath(r, "paths.switchLock", pathsObj["switchLock"]),
  };

  const cacheUrl = opt(
    "cacheUrl",
    (v) => {
      const url = r.nullableString("cacheUrl", v);
      if (url === null) return null;
      const problem = cacheUrlProblem(url, { fromControlPlane: false });
      if (problem) r.fail("cacheUrl", problem);
      return url;
    },
    DEFAULTS.cacheUrl,
  );

  const config: AgentConfig = {
    controlPlaneUrl,
    machineId,
    tags,
    pollInterval: opt("pollInterval", (v) => r.duration("pollInterval", v), DEFAULTS.pollInterval),
    retryInterval: opt("retryInterval", (v) => r.duration("retryInterval", v), DEFAULTS.retryInterval),
    healthInterval: opt("healthInterval", (v) => r.duration("healthInterval", v), DEFAULTS.healthInterval),
    healthChecks: parseHealthChecks(r, obj["healthChecks"]),
    metricsPort: opt(
      "metricsPort",
      (v) => (v === null ? null : r.integer("metricsPort", v, 0, 65535)),
      DEFAULTS.metricsPort,
    ),
    metricsAddress: opt("metricsAddress", (v) => r.string("metricsAddress", v), DEFAULTS.metricsAddress),
    dbPath: opt("dbPath", (v) => absolutePath(r, "dbPath", v), DEFAULTS.dbPath),
    tls,
    allowInsecure,
    cacheUrl,
    dryRun: opt("dryRun", (v) => r.bool("dryRun", v), DEFAULTS.dryRun),
    protocol: opt("protocol", (v) => r.choice("protocol", v, PROTOCOLS), DEFAULTS.protocol),
    verifyTimeout: opt("verifyTimeout", (v) => r.duration("verifyTimeout", v), DEFAULTS.verifyTimeout),
    activationTimeout: opt(
      "activationTimeout",
      (v) => r.duration("activationTimeout", v),
      DEFAULTS.activationTimeout,
    ),
    activation: opt("activation", (v) => r.choice("activation", v, ACTIVATION_MODES), DEFAULTS.activation),
    fetchTimeout: opt("fetchTimeout", (v) => r.duration("fetchTimeout", v), DEFAULTS.fetchTimeout),
    requestTimeout: opt("requestTimeout", (v) => r.duration("requestTimeout", v), DEFAULTS.requestTimeout),
    heartbeatInterval: opt(
      "heartbeatInterval",
      (v) => r.duration("heartbeatInterval", v),
      DEFAULTS.heartbeatInterval,
    ),
    logLevel: opt(
      "logLevel",
      (v) => {
        const level = r.string("logLevel", v);
        if (!isLogLevel(level))
          r.fail("logLevel", `must be one of ${LOG_LEVELS.join(", ")}, got ${describe(level)}`);
        return level;
      },
      DEFAULTS.logLevel,
    ),
    paths,
  };
  return config;
}

/**
 * Parses a configuration object (the JSON file's content) into the fully defaulted config.
 * `source` names where it came from (a file path) and appears in every error.
 * Pure: reads no files (machineId falls back to the host name).
 */
export function parseAgentConfig(raw: unknown, source: string): AgentConfig {
  return parseWithSources(raw, () => source);
}

// ----------------------------------------------------------------------------- file + env + flags

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

/** Turns the text of a flag or environment variable into the JSON value the parser expects. */
function fromText(spec: OptionSpec, text: string, source: string): unknown {
  switch (spec.kind) {
    case "bool": {
      const t = text.trim().toLowerCase();
      if (["1", "true", "yes", "on"].includes(t)) return true;
      if (["0", "false", "no", "off", ""].includes(t)) return false;
      throw new ConfigError(spec.key, source, `must be true or false, got ${describe(text)}`);
    }
    case "duration":
      return parseDurationString(text) ?? text;
    case "port": {
      if (text.trim() === "" || text.trim() === "null") return null;
      const n = Number(text);
      return Number.isFinite(n) ? n : text;
    }
    case "tags":
      return text
        .split(",")
        .map((t) => t.trim())
        .filter(Boolean);
    case "nullableString":
      return text === "" ? null : text;
    default:
      return text;
  }
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
  const raw: Record<string, unknown> =
    fromFile === undefined
      ? {}
      : typeof fromFile === "object" && fromFile !== null && !Array.isArray(fromFile)
        ? (structuredClone(fromFile) as Record<string, unknown>)
        : (() => {
            throw new ConfigError("", path, `must contain a JSON object, got ${describe(fromFile)}`);
          })();
  const overrides: Record<string, string> = {};
  for (const spec of OPTIONS) {
    const text = env[spec.env];
    if (text === undefined) continue;
    const source = `environment variable ${spec.env}`;
    setPath(raw, spec.key, fromText(spec, text, source));
    overrides[spec.key] = source;
  }
  for (const spec of OPTIONS) {
    const value = options.flags?.[spec.key];
    if (value === undefined) continue;
    const source = `flag --${spec.flag}`;
    setPath(raw, spec.key, typeof value === "boolean" ? value : fromText(spec, value, source));
    overrides[spec.key] = source;
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
