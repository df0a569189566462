/**
 * `serve` settings from flags and NIXFLEET_CP_* environment variables (a flag wins over its
 * variable), validated into one typed config. Pure, so every rule is table-tested; a bad value is
 * a UsageError naming the flag, which main turns into exit code 2.
 */
import { dirname, join } from "node:path";
import { parseDuration } from "../common/duration.js";
import { isLogLevel, LOG_LEVELS } from "../common/logger.js";
import type { HostPort } from "./control-plane.js";
import {
  type ConnectionTimeouts,
  DEFAULT_CONNECTION_TIMEOUTS,
  DEFAULT_LISTEN_BACKLOG,
  DEFAULT_MAX_HANDSHAKES,
} from "./http/connection-timeouts.js";
import { DEFAULT_EXECUTOR_LEASE_MS } from "./leader/lease.js";

export class UsageError extends Error {
  constructor(
    readonly flag: string,
    reason: string,
  ) {
    super(`${flag}: ${reason}`);
    this.name = "UsageError";
  }
}

/** The raw flag values as the argument parser saw them (undefined = not given). */
export interface ServeFlags {
  listen?: string | undefined;
  dbPath?: string | undefined;
  databaseUrl?: string | undefined;
  tlsCert?: string | undefined;
  tlsKey?: string | undefined;
  clientCa?: string | undefined;
  tlsTicketKeys?: string | undefined;
  allowInsecure?: boolean | undefined;
  metricsListen?: string | undefined;
  metricsRequireKey?: boolean | undefined;
  dashboardListen?: string | undefined;
  staleAfter?: string | undefined;
  pollHint?: string | undefined;
  executorTick?: string | undefined;
  executorLease?: string | undefined;
  heartbeatInterval?: string | undefined;
  reportRetention?: string | undefined;
  logLevel?: string | undefined;
  idleTimeout?: string | undefined;
  headerTimeout?: string | undefined;
  handshakeTimeout?: string | undefined;
  listenBacklog?: string | undefined;
  maxHandshakes?: string | undefined;
}

export interface ServeConfig {
  listen: HostPort;
  dbPath: string;
  /** PostgreSQL instead of the SQLite file at dbPath (several replicas can share it). */
  databaseUrl: string | null;
  /** ticketKeys: the session-ticket key file (http/ticket-keys.ts); null: per-process keys. */
  tls: { cert: string; key: string; clientCa: string; ticketKeys: string | null } | null;
  allowInsecure: boolean;
  metricsListen: HostPort | null;
  metricsRequireKey: boolean;
  dashboardListen: HostPort | null;
  staleAfterSeconds: number;
  pollHintSeconds: number;
  executorTickMs: number;
  /** PostgreSQL: how long an executor leader's lease lasts without renewal (renewed every third). */
  executorLeaseMs: number;
  heartbeatIntervalSeconds: number;
  reportRetentionHours: number;
  logLevel: string;
  connectionTimeouts: ConnectionTimeouts;
  /** listen(2) backlog of every listener (the kernel caps it at net.core.somaxconn). */
  listenBacklog: number;
  /** TLS handshakes in progress at once per listener (http/handshake-gate.ts); 0: no limit. */
  maxHandshakes: number;
}

/** The session-ticket key file when --tls-ticket-keys is not given: next to the SQLite file. */
export const TICKET_KEYS_FILE_NAME = "tls-ticket-keys";

export const DEFAULTS = {
  listen: "0.0.0.0:8443",
  dbPath: "/var/lib/nixfleet-cp/state.db",
  staleAfter: 300,
  pollHint: 5,
  executorTick: 2,
  executorLease: DEFAULT_EXECUTOR_LEASE_MS / 1000,
  heartbeatInterval: 15,
  reportRetention: 168,
  logLevel: "info",
  idleTimeout: DEFAULT_CONNECTION_TIMEOUTS.idleMs / 1000,
  headerTimeout: DEFAULT_CONNECTION_TIMEOUTS.headerMs / 1000,
  handshakeTimeout: DEFAULT_CONNECTION_TIMEOUTS.handshakeMs / 1000,
  listenBacklog: DEFAULT_LISTEN_BACKLOG,
  maxHandshakes: DEFAULT_MAX_HANDSHAKES,
} as const;

/** The environment variable for each flag. */
export const ENV: Record<keyof ServeFlags, string> = {
  listen: "NIXFLEET_CP_LISTEN",
  dbPath: "NIXFLEET_CP_DB_PATH",
  databaseUrl: "NIXFLEET_CP_DATABASE_URL",
  tlsCert: "NIXFLEET_CP_TLS_CERT",
  tlsKey: "NIXFLEET_CP_TLS_KEY",
  clientCa: "NIXFLEET_CP_CLIENT_CA",
  tlsTicketKeys: "NIXFLEET_CP_TLS_TICKET_KEYS",
  allowInsecure: "NIXFLEET_CP_ALLOW_INSECURE",
  metricsListen: "NIXFLEET_CP_METRICS_LISTEN",
  metricsRequireKey: "NIXFLEET_CP_METRICS_REQUIRE_KEY",
  dashboardListen: "NIXFLEET_CP_DASHBOARD_LISTEN",
  staleAfter: "NIXFLEET_CP_STALE_AFTER",
  pollHint: "NIXFLEET_CP_POLL_HINT",
  executorTick: "NIXFLEET_CP_EXECUTOR_TICK",
  executorLease: "NIXFLEET_CP_EXECUTOR_LEASE",
  heartbeatInterval: "NIXFLEET_CP_HEARTBEAT_INTERVAL",
  reportRetention: "NIXFLEET_CP_REPORT_RETENTION",
  logLevel: "NIXFLEET_CP_LOG_LEVEL",
  idleTimeout: "NIXFLEET_CP_IDLE_TIMEOUT",
  headerTimeout: "NIXFLEET_CP_HEADER_TIMEOUT",
  handshakeTimeout: "NIXFLEET_CP_HANDSHAKE_TIMEOUT",
  listenBacklog: "NIXFLEET_CP_LISTEN_BACKLOG",
  maxHandshakes: "NIXFLEET_CP_MAX_HANDSHAKES",
};

const FLAG: Record<keyof ServeFlags, string> = {
  listen: "--listen",
  dbPath: "--db-path",
  databaseUrl: "--database-url",
  tlsCert: "--tls-cert",
  tlsKey: "--tls-key",
  clientCa: "--client-ca",
  tlsTicketKeys: "--tls-ticket-keys",
  allowInsecure: "--allow-insecure",
  metricsListen: "--metrics-listen",
  metricsRequireKey: "--metrics-require-key",
  dashboardListen: "--dashboard-listen",
  staleAfter: "--stale-after",
  pollHint: "--poll-hint",
  executorTick: "--executor-tick",
  executorLease: "--executor-lease",
  heartbeatInterval: "--heartbeat-interval",
  reportRetention: "--report-retention",
  logLevel: "--log-level",
  idleTimeout: "--idle-timeout",
  headerTimeout: "--header-timeout",
  handshakeTimeout: "--handshake-timeout",
  listenBacklog: "--listen-backlog",
  maxHandshakes: "--max-handshakes",
};

/** Parses "host:port", "[v6]:port" or ":port" (all interfaces); port 0 asks for a free one. */
export function parseHostPort(flag: string, value: string): HostPort {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]*)):([0-9]{1,5})$/.exec(value.trim());
  if (!m)
    throw new UsageError(
      flag,
      `expected host:port (e.g. 0.0.0.0:8443 or [::1]:8443), got ${JSON.stringify(value)}`,
    );
  const port = Number(m[3]);
  if (port > 65535) throw new UsageError(flag, `port ${port} is out of range (0–65535)`);
  const host = m[1] ?? (m[2] || "0.0.0.0");
  return { host, port };
}

/**
 * A duration flag through the one shared parser, so `--stale-after 5m` works as `pollInterval:
 * "5m"` does in the agent. A bare number counts in the flag's own unit (seconds, or hours for
 * --report-retention, as documented); a value with a unit is converted to it.
 */
function duration(
  flag: string,
  value: string,
  options: { min: number; max: number; integer: boolean; unitSeconds?: number },
): number {
  const unitSeconds = options.unitSeconds ?? 1;
  const unitName = unitSeconds === 3600 ? "hours" : "seconds";
  const bare = /^\s*\d+(?:\.\d+)?\s*$/.test(value);
  const parsed = parseDuration(value);
  const n = parsed === undefined ? undefined : bare ? parsed : parsed / unitSeconds;
  if (n === undefined || (options.integer && !Number.isInteger(n)))
    throw new UsageError(
      flag,
      `expected ${options.integer ? "a whole number" : "a number"} of ${unitName} or a duration like "30s", "5m", "2h", "1d", got ${JSON.stringify(value)}`,
    );
  if (n < options.min || n > options.max)
    throw new UsageError(flag, `must be between ${options.min} and ${options.max} ${unitName}, got ${n}`);
  return n;
}

/** A connection timeout in milliseconds: a duration from 1 s to 1 day. */
function timeoutMs(flag: string, value: string): number {
  return Math.round(duration(flag, value, { min: 1, max: 86400, integer: false }) * 1000);
}

/** A whole-number flag from `min` to `max`. */
function wholeNumber(
  key: "listenBacklog" | "maxHandshakes",
  value: string | undefined,
  min: number,
  max: number,
): number {
  if (value === undefined) return DEFAULTS[key];
  const n = Number(value.trim());
  if (!/^\s*\d+\s*$/.test(value) || n < min || n > max)
    throw new UsageError(
      FLAG[key],
      `expected a whole number from ${min} to ${max}, got ${JSON.stringify(value)}`,
    );
  return n;
}

function bool(flag: string, envName: string, value: string): boolean {
  const v = value.trim().toLowerCase();
  if (["1", "true", "yes", "on"].includes(v)) return true;
  if (["", "0", "false", "no", "off"].includes(v)) return false;
  throw new UsageError(flag, `${envName}=${JSON.stringify(value)} is not a boolean (use 1/0, true/false)`);
}

/**
 * --database-url: a postgres:// (or postgresql://) URL, or nothing for the SQLite file. Giving
 * both it and --db-path is refused: one of them would be silently ignored.
 */
export function parseDatabaseUrl(value: string | undefined, dbPathGiven: boolean): string | null {
  if (value === undefined || value.trim() === "") return null;
  let url: URL;
  try {
    url = new URL(value.trim());
  } catch {
    throw new UsageError(
      "--database-url",
      "is not a URL; expected postgres://USER:PASSWORD@HOST:PORT/DATABASE",
    );
  }
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:")
    throw new UsageError(
      "--database-url",
      `must be a postgres:// URL (got ${url.protocol}//…); for SQLite use --db-path`,
    );
  if (dbPathGiven)
    throw new UsageError(
      "--database-url",
      "and --db-path (NIXFLEET_CP_DB_PATH) both given; the control plane uses one database: drop one",
    );
  return value.trim();
}

export function resolveServeConfig(flags: ServeFlags, env: Record<string, string | undefined>): ServeConfig {
  const str = (key: keyof ServeFlags): string | undefined => {
    const given = flags[key];
    if (typeof given === "string") return given;
    return env[ENV[key]] ?? undefined;
  };
  const flagOrEnvBool = (key: "allowInsecure" | "metricsRequireKey"): boolean => {
    if (flags[key] === true) return true;
    const fromEnv = env[ENV[key]];
    return fromEnv === undefined ? false : bool(FLAG[key], ENV[key], fromEnv);
  };
  const num = (
    key: keyof ServeFlags,
    fallback: number,
    options: { min: number; max: number; integer: boolean; unitSeconds?: number },
  ) => {
    const v = str(key);
    return v === undefined ? fallback : duration(FLAG[key], v, options);
  };

  const allowInsecure = flagOrEnvBool("allowInsecure");
  const cert = str("tlsCert") || undefined;
  const key = str("tlsKey") || undefined;
  const clientCa = str("clientCa") || undefined;
  const ticketKeys = str("tlsTicketKeys") || undefined;
  let tls: ServeConfig["tls"] = null;
  if (allowInsecure) {
    const given = [
      cert && "--tls-cert",
      key && "--tls-key",
      clientCa && "--client-ca",
      ticketKeys && "--tls-ticket-keys",
    ].filter(Boolean);
    if (given.length)
      throw new UsageError(
        "--allow-insecure",
        `serves plain HTTP, so ${given.join(", ")} would be ignored; drop one or the other`,
      );
  } else {
    if (!cert)
      throw new UsageError(
        "--tls-cert",
        "required: the server certificate (PEM); or --allow-insecure for development",
      );
    if (!key) throw new UsageError("--tls-key", "required: the server certificate's private key (PEM)");
    if (!clientCa)
      throw new UsageError(
        "--client-ca",
        "required: the CA (PEM) that signs agent client certificates; agents authenticate with them",
      );
    tls = { cert, key, clientCa, ticketKeys: ticketKeys ?? null };
  }

  const logLevel = str("logLevel") ?? DEFAULTS.logLevel;
  if (!isLogLevel(logLevel))
    throw new UsageError(
      "--log-level",
      `must be one of ${LOG_LEVELS.join(", ")}, got ${JSON.stringify(logLevel)}`,
    );
  const dbPath = str("dbPath") ?? DEFAULTS.dbPath;
  if (dbPath.trim() === "") throw new UsageError("--db-path", "must not be empty");
  const databaseUrl = parseDatabaseUrl(str("databaseUrl"), str("dbPath") !== undefined);
  // The state directory is where the SQLite file lives (by default also with PostgreSQL); an
  // in-memory database has none, and its restarts lose everything anyway.
  if (tls && !tls.ticketKeys && dbPath !== ":memory:")
    tls.ticketKeys = join(dirname(dbPath), TICKET_KEYS_FILE_NAME);
  const metricsListen = str("metricsListen");
  const dashboardListen = str("dashboardListen");
  const timeout = (key: "idleTimeout" | "headerTimeout" | "handshakeTimeout", fallback: number) => {
    const v = str(key);
    return v === undefined ? fallback * 1000 : timeoutMs(FLAG[key], v);
  };
  const heartbeatIntervalSeconds = num("heartbeatInterval", DEFAULTS.heartbeatInterval, {
    min: 1,
    max: 3600,
    integer: true,
  });
  // Agent streams carry the control plane's heartbeats; they must never look idle. The default
  // grows with a long heartbeat interval; a value given explicitly must leave room for two.
  const connectionTimeouts: ConnectionTimeouts = {
    idleMs: timeout("idleTimeout", Math.max(DEFAULTS.idleTimeout, 4 * heartbeatIntervalSeconds)),
    headerMs: timeout("headerTimeout", DEFAULTS.headerTimeout),
    handshakeMs: timeout("handshakeTimeout", DEFAULTS.handshakeTimeout),
  };
  if (connectionTimeouts.idleMs <= 2 * heartbeatIntervalSeconds * 1000)
    throw new UsageError(
      "--idle-timeout",
      `must be longer than twice --heartbeat-interval (${heartbeatIntervalSeconds}s), or agent streams would be cut`,
    );

  return {
    listen: parseHostPort("--listen", str("listen") ?? DEFAULTS.listen),
    dbPath,
    databaseUrl,
    tls,
    allowInsecure,
    metricsListen: metricsListen ? parseHostPort("--metrics-listen", metricsListen) : null,
    metricsRequireKey: flagOrEnvBool("metricsRequireKey"),
    dashboardListen: dashboardListen ? parseHostPort("--dashboard-listen", dashboardListen) : null,
    staleAfterSeconds: num("staleAfter", DEFAULTS.staleAfter, { min: 1, max: 30 * 86400, integer: true }),
    pollHintSeconds: num("pollHint", DEFAULTS.pollHint, { min: 1, max: 3600, integer: true }),
    executorTickMs: Math.round(
      1000 * num("executorTick", DEFAULTS.executorTick, { min: 0.05, max: 600, integer: false }),
    ),
    // Claims go out every third of it; below 0.3 s a busy database would make leaders flap.
    executorLeaseMs: Math.round(
      1000 * num("executorLease", DEFAULTS.executorLease, { min: 0.3, max: 600, integer: false }),
    ),
    heartbeatIntervalSeconds,
    reportRetentionHours: num("reportRetention", DEFAULTS.reportRetention, {
      min: 1,
      max: 24 * 3650,
      integer: true,
      unitSeconds: 3600,
    }),
    logLevel,
    connectionTimeouts,
    listenBacklog: wholeNumber("listenBacklog", str("listenBacklog"), 1, 65535),
    maxHandshakes: wholeNumber("maxHandshakes", str("maxHandshakes"), 0, 100_000),
  };
}
