#!/usr/bin/env node
/**
 * nixfleet-control-plane: `serve` (the default) runs the server; `keys create|list|revoke`
 * manage API keys in the database directly (how the first admin key is made).
 *
 * Exit codes: 0 success or clean shutdown, 1 a fatal error at start-up or while running (the
 * message says what to fix), 2 bad usage (the message names the flag).
 */
import { Command, CommanderError, Option } from "commander";
import { isMainModule } from "../common/entry.js";
import { createLogger, type Logger } from "../common/logger.js";
import { loadTlsMaterial, TlsConfigError } from "../common/tls.js";
import {
  DEFAULTS,
  ENV,
  parseDatabaseUrl,
  resolveServeConfig,
  type ServeConfig,
  type ServeFlags,
  TICKET_KEYS_FILE_NAME,
  UsageError,
} from "./config.js";
import { ControlPlane } from "./control-plane.js";
import { TicketKeysError } from "./http/ticket-keys.js";
import { type KeysDatabase, keysCreate, keysList, keysRevoke } from "./keys-command.js";
import { migrateCommand } from "./migrate-command.js";
import { TargetNotEmptyError } from "./store/copy.js";
import { DatabaseStartupError } from "./store/database.js";
import { AlreadyExistsError, ConflictError, NotFoundError } from "./store/errors.js";

const io = {
  out: (line: string) => process.stdout.write(`${line}\n`),
  err: (line: string) => process.stderr.write(`${line}\n`),
};

function fail(code: number, message: string): never {
  process.stderr.write(`nixfleet-control-plane: ${message}\n`);
  process.exit(code);
}

function startupMessage(err: unknown, config: ServeConfig): string {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
  if (e.code === "EADDRINUSE")
    return `cannot listen on ${e.address ?? config.listen.host}:${e.port ?? config.listen.port}: the address is already in use; stop the other process or pick another --listen (or --metrics-listen) port`;
  if (e.code === "EACCES")
    return `cannot listen on ${config.listen.host}:${config.listen.port}: permission denied (ports below 1024 need privileges)`;
  if (e.code === "EADDRNOTAVAIL")
    return `cannot listen on ${config.listen.host}: no such local address; check --listen`;
  if (err instanceof DatabaseStartupError || err instanceof TlsConfigError || err instanceof TicketKeysError)
    return err.message;
  return `start-up failed: ${(err as Error).message ?? String(err)}`;
}

async function serve(flags: ServeFlags): Promise<void> {
  let config: ServeConfig;
  try {
    config = resolveServeConfig(flags, process.env);
  } catch (err) {
    if (err instanceof UsageError) fail(2, err.message);
    throw err;
  }
  const logger: Logger = createLogger({ name: "nixfleet-control-plane", level: config.logLevel });
  let tls = null;
  if (config.tls) {
    try {
      const material = loadTlsMaterial(
        { ca: config.tls.clientCa, cert: config.tls.cert, key: config.tls.key },
        { ca: "--client-ca", cert: "--tls-cert", key: "--tls-key" },
      );
      tls = {
        cert: material.cert!,
        key: material.key!,
        ca: material.ca!,
        ...(config.tls.ticketKeys
          ? {
              ticketKeys: {
                file: config.tls.ticketKeys,
                option: "--tls-ticket-keys",
                onReloadError: (message: string) => logger.error(message),
              },
            }
          : {}),
      };
    } catch (err) {
      if (err instanceof TlsConfigError) fail(1, err.message);
      throw err;
    }
  } else {
    logger.warn(
      "--allow-insecure: serving PLAIN HTTP without TLS. Anyone who can reach this port can claim to be any machine " +
        "and read API keys off the wire. Use this only on a development machine.",
    );
  }
  const cp = new ControlPlane({
    listen: config.listen,
    dbPath: config.dbPath,
    databaseUrl: config.databaseUrl,
    tls,
    allowInsecure: config.allowInsecure,
    metricsListen: config.metricsListen,
    metricsRequireKey: config.metricsRequireKey,
    dashboardListen: config.dashboardListen,
    staleAfterSeconds: config.staleAfterSeconds,
    pollHintSeconds: config.pollHintSeconds,
    executorTickMs: config.executorTickMs,
    executorLeaseMs: config.executorLeaseMs,
    heartbeatIntervalSeconds: config.heartbeatIntervalSeconds,
    reportRetentionHours: config.reportRetentionHours,
    connectionTimeouts: config.connectionTimeouts,
    listenBacklog: config.listenBacklog,
    maxHandshakes: config.maxHandshakes,
    logger,
  });

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      logger.warn({ signal }, "second signal: exiting at once");
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal }, "signal received; shutting down");
    const hard = setTimeout(() => {
      logger.error("shutdown did not finish within 20 s; exiting anyway");
      process.exit(0);
    }, 20_000);
    hard.unref();
    cp.stop().then(
      () => process.exit(0),
      (err) => {
        logger.error({ err }, "error during shutdown");
        process.exit(0);
      },
    );
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
  process.on("unhandledRejection", (err) => {
    logger.error({ err }, "unhandled promise rejection (bug); continuing");
  });

  try {
    await cp.start();
  } catch (err) {
    if (stopping) return;
    const message = startupMessage(err, config);
    logger.fatal({ err }, message);
    await cp.stop().catch(() => {});
    fail(1, message);
  }
}

function program(): Command {
  const root = new Command("nixfleet-control-plane")
    .description("The nixfleet control plane: machines, releases, health-gated rollouts, push to agents.")
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  const serveCmd = root
    .command("serve", { isDefault: true })
    .description("run the server (the default command)")
    .exitOverride();
  const opt = (flags: string, key: keyof ServeFlags, description: string, defaultHint?: string | number) =>
    serveCmd.addOption(
      new Option(
        flags,
        `${description} [env ${ENV[key]}${defaultHint !== undefined ? `, default ${defaultHint}` : ""}]`,
      ),
    );
  opt("--listen <host:port>", "listen", "address to listen on (port 0: pick a free port)", DEFAULTS.listen);
  opt("--db-path <file>", "dbPath", "SQLite database file", DEFAULTS.dbPath);
  opt("--database-url <url>", "databaseUrl", "PostgreSQL database (postgres://…) instead of SQLite");
  opt("--tls-cert <file>", "tlsCert", "server certificate (PEM)");
  opt("--tls-key <file>", "tlsKey", "server private key (PEM)");
  opt("--client-ca <file>", "clientCa", "CA bundle (PEM) that signs agent client certificates");
  opt(
    "--tls-ticket-keys <file>",
    "tlsTicketKeys",
    "TLS session-ticket key (48 random bytes, mode 0600; created if absent; the same file on every replica; re-read every minute)",
    `${TICKET_KEYS_FILE_NAME} next to --db-path`,
  );
  opt(
    "--allow-insecure",
    "allowInsecure",
    "DEVELOPMENT ONLY: plain HTTP (h2c and HTTP/1.1), agents' claimed ids trusted",
  );
  opt("--metrics-listen <host:port>", "metricsListen", "also serve /metrics on this plain-HTTP address");
  opt("--metrics-require-key", "metricsRequireKey", "require an API key (any role) for /metrics");
  opt(
    "--dashboard-listen <host:port>",
    "dashboardListen",
    "also serve the web dashboard (and the API for it) here, with the same TLS certificate but no client-certificate request",
  );
  opt(
    "--stale-after <seconds>",
    "staleAfter",
    "a machine not heard from this long is stale",
    DEFAULTS.staleAfter,
  );
  opt(
    "--poll-hint <seconds>",
    "pollHint",
    "poll interval suggested to agents in an active rollout",
    DEFAULTS.pollHint,
  );
  opt(
    "--executor-tick <seconds>",
    "executorTick",
    "how often rollouts are checked for timeouts",
    DEFAULTS.executorTick,
  );
  opt(
    "--executor-lease <seconds>",
    "executorLease",
    "PostgreSQL: executor leader lease; another replica takes over this long after the leader dies",
    DEFAULTS.executorLease,
  );
  opt(
    "--heartbeat-interval <seconds>",
    "heartbeatInterval",
    "stream heartbeat interval",
    DEFAULTS.heartbeatInterval,
  );
  opt(
    "--report-retention <hours>",
    "reportRetention",
    "keep reports and health reports this long",
    DEFAULTS.reportRetention,
  );
  opt(
    "--idle-timeout <duration>",
    "idleTimeout",
    "close connections (and half-open requests) with no traffic for this long",
    `${DEFAULTS.idleTimeout}s`,
  );
  opt(
    "--header-timeout <duration>",
    "headerTimeout",
    "an HTTP/1.1 connection must send a complete request head within this",
    `${DEFAULTS.headerTimeout}s`,
  );
  opt(
    "--handshake-timeout <duration>",
    "handshakeTimeout",
    "a new connection must finish its TLS handshake within this",
    `${DEFAULTS.handshakeTimeout}s`,
  );
  opt(
    "--listen-backlog <n>",
    "listenBacklog",
    "accept queue of each listener (capped by net.core.somaxconn); room for a reconnect storm",
    DEFAULTS.listenBacklog,
  );
  opt(
    "--max-handshakes <n>",
    "maxHandshakes",
    "TLS handshakes in progress at once; more connections wait, unread, for a place (0: no limit)",
    DEFAULTS.maxHandshakes,
  );
  opt(
    "--log-level <level>",
    "logLevel",
    "fatal, error, warn, info, debug, trace or silent",
    DEFAULTS.logLevel,
  );
  serveCmd.action(async (options: ServeFlags) => {
    await serve(options);
  });

  root
    .command("migrate")
    .description("copy a SQLite control-plane database into an empty PostgreSQL database")
    .requiredOption("--from <sqlite:path>", "the SQLite database (sqlite:/var/lib/nixfleet-cp/state.db)")
    .requiredOption("--to <url>", "the empty PostgreSQL database (postgres://user:password@host/db)")
    .exitOverride()
    .action(async (o: { from: string; to: string }) => migrateCommand(o.from, o.to, io));

  const keys = root
    .command("keys")
    .description("manage API keys in the database (run on the control-plane host)")
    .exitOverride();
  const dbOption = () =>
    new Option(
      "--db-path <file>",
      `SQLite database file [env NIXFLEET_CP_DB_PATH, default ${DEFAULTS.dbPath}]`,
    );
  const urlOption = () =>
    new Option(
      "--database-url <url>",
      "PostgreSQL database instead of SQLite [env NIXFLEET_CP_DATABASE_URL]",
    );
  const dbPath = (o: { dbPath?: string; databaseUrl?: string }): KeysDatabase => {
    const path = o.dbPath ?? process.env["NIXFLEET_CP_DB_PATH"];
    const url = parseDatabaseUrl(
      o.databaseUrl ?? process.env["NIXFLEET_CP_DATABASE_URL"],
      path !== undefined,
    );
    return url ? { databaseUrl: url } : (path ?? DEFAULTS.dbPath);
  };
  keys
    .command("create")
    .description("create a key and print its secret (alone) on stdout")
    .requiredOption("--name <name>", "key name (letters, digits, . _ -)")
    .requiredOption("--role <role>", "readonly, deploy or admin")
    .addOption(dbOption())
    .addOption(urlOption())
    .option(
      "--init",
      "create the database when it does not exist yet (a fresh install); its directory must exist",
    )
    .exitOverride()
    .action(
      async (o: { name: string; role: string; dbPath?: string; databaseUrl?: string; init?: boolean }) =>
        keysCreate(dbPath(o), o.name, o.role, io, { init: o.init ?? false }),
    );
  keys
    .command("list")
    .description("list keys (never their secrets)")
    .option("--include-revoked", "also list revoked keys")
    .option("--json", "print JSON")
    .addOption(dbOption())
    .addOption(urlOption())
    .exitOverride()
    .action(async (o: { includeRevoked?: boolean; json?: boolean; dbPath?: string; databaseUrl?: string }) =>
      keysList(dbPath(o), o.includeRevoked ?? false, o.json ?? false, io),
    );
  keys
    .command("revoke")
    .description("revoke a key by id or name")
    .argument("<key>", "key id or name")
    .addOption(dbOption())
    .addOption(urlOption())
    .exitOverride()
    .action(async (key: string, o: { dbPath?: string; databaseUrl?: string }) =>
      keysRevoke(dbPath(o), key, io),
    );
  return root;
}

async function main(): Promise<void> {
  try {
    await program().parseAsync(process.argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === "commander.helpDisplayed" || err.code === "commander.version" || err.exitCode === 0)
        process.exit(0);
      process.exit(2);
    }
    if (err instanceof UsageError) fail(2, err.message);
    if (err instanceof DatabaseStartupError || err instanceof TargetNotEmptyError) fail(1, err.message);
    if (err instanceof NotFoundError || err instanceof ConflictError || err instanceof AlreadyExistsError)
      fail(1, err.message);
    fail(1, (err as Error).stack ?? String(err));
  }
}

if (isMainModule(import.meta.url)) await main();
