#!/usr/bin/env node
/**
 * nixfleet-agent: the entry point. Reads the configuration (file, NIXFLEET_* variables, flags),
 * checks the TLS files, starts the agent and handles signals.
 *
 * Exit codes: 0 stopped cleanly (SIGTERM, SIGINT, or SIGHUP — the unit's reload, after which
 * systemd restarts it); 1 runtime failure; 2 bad command line; 78 (EX_CONFIG) bad configuration
 * — the message names the key and where it came from. A second signal while stopping exits at
 * once with 143.
 */
// First: limits the heap's growth before the rest of the agent loads (see heap.ts).
import "./heap.js";
import { Command, CommanderError, Option } from "commander";
import { isMainModule } from "../common/entry.js";
import { createLogger } from "../common/logger.js";
import { loadTlsMaterial, TlsConfigError, type TlsMaterial } from "../common/tls.js";
import type { Agent } from "./agent.js";
import { type AgentConfig, ConfigError, DEFAULT_CONFIG_PATH, loadAgentConfig, OPTIONS } from "./config.js";
import { AGENT_VERSION } from "./version.js";

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_CONFIG = 78;
export const EXIT_FORCED = 143;

/** How long a clean stop may take before the process exits anyway (state is journaled). */
const STOP_DEADLINE_MS = 45_000;

export function buildCommand(): Command {
  const program = new Command("nixfleet-agent")
    .description(
      "Pull-based NixOS deployment agent: fetches the generation the nixfleet control plane assigns, " +
        "switches to it, verifies health and rolls back on failure.\n\n" +
        "Options come from the JSON file (--config), then NIXFLEET_* environment variables, then flags " +
        "(flags win). Durations are seconds or a number with a unit: 500ms, 30s, 5m, 1h.\n" +
        "Exit codes: 0 clean stop, 1 runtime failure, 2 bad command line, 78 bad configuration.",
    )
    .version(AGENT_VERSION, "-V, --version")
    .helpOption("-h, --help", "show this help")
    .addOption(
      new Option(
        "-c, --config <path>",
        `configuration file (env NIXFLEET_CONFIG; default ${DEFAULT_CONFIG_PATH})`,
      ),
    )
    .allowExcessArguments(false);
  for (const spec of OPTIONS) {
    const help = `${spec.help} [env ${spec.env}; file key ${spec.key}]`;
    const option =
      spec.kind === "bool" ? new Option(`--${spec.flag}`, help) : new Option(`--${spec.flag} <value>`, help);
    if (spec.choices) option.choices(spec.choices as string[]);
    program.addOption(option);
  }
  return program;
}

/** Maps parsed commander options (camelCased flags) back to configuration keys. */
export function flagsToKeys(opts: Record<string, unknown>): Record<string, string | boolean | undefined> {
  const out: Record<string, string | boolean | undefined> = {};
  for (const spec of OPTIONS) {
    const attr = spec.flag.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
    const value = opts[attr];
    if (typeof value === "string" || typeof value === "boolean") out[spec.key] = value;
  }
  return out;
}

/** Loads TLS files and checks the certificate's CN against machineId. */
export function loadAgentTls(config: AgentConfig, sourceOf: (key: string) => string): TlsMaterial {
  let material: TlsMaterial;
  try {
    material = loadTlsMaterial(
      {
        ca: config.tls.caCert ?? undefined,
        cert: config.tls.clientCert ?? undefined,
        key: config.tls.clientKey ?? undefined,
      },
      { ca: "tls.caCert", cert: "tls.clientCert", key: "tls.clientKey" },
    );
  } catch (err) {
    if (err instanceof TlsConfigError) {
      const key = /^(tls\.\w+)/.exec(err.message)?.[1] ?? "tls";
      throw new ConfigError(key, sourceOf(key), err.message.replace(/^tls\.\w+: /, ""));
    }
    throw err;
  }
  if (material.commonName !== undefined && material.commonName !== config.machineId) {
    throw new ConfigError(
      "machineId",
      sourceOf("machineId"),
      `${JSON.stringify(config.machineId)} does not match the CN ${JSON.stringify(material.commonName)} of the client certificate ` +
        `${config.tls.clientCert} (tls.clientCert); the control plane would refuse every call. Set machineId to the CN or issue a certificate for ${config.machineId}`,
    );
  }
  return material;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildCommand();
  program.exitOverride();
  program.configureOutput({ writeErr: (text) => process.stderr.write(text) });
  try {
    program.parse(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === "commander.helpDisplayed" || err.code === "commander.version") return EXIT_OK;
      return EXIT_USAGE;
    }
    throw err;
  }
  const opts = program.opts<Record<string, unknown>>();

  let config: AgentConfig;
  let tls: TlsMaterial;
  let file: string | undefined;
  try {
    const loaded = loadAgentConfig({
      configPath: opts["config"] as string | undefined,
      flags: flagsToKeys(opts),
    });
    config = loaded.config;
    file = loaded.file;
    const sourceOf = (key: string) => loaded.overrides[key] ?? loaded.file ?? "defaults";
    tls = loadAgentTls(config, sourceOf);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`nixfleet-agent: ${err.message}\n`);
      return EXIT_CONFIG;
    }
    throw err;
  }

  const log = createLogger({
    name: "nixfleet-agent",
    level: config.logLevel,
    base: { machineId: config.machineId },
  });
  log.info(
    { event: "config_loaded", file: file ?? null },
    file ? `configuration from ${file}` : "no configuration file; flags, environment and defaults",
  );
  if (tls.notAfter && tls.notAfter.getTime() - Date.now() < 7 * 24 * 3600 * 1000) {
    log.warn(
      { event: "certificate_expiring", notAfter: tls.notAfter.toISOString(), file: config.tls.clientCert },
      tls.notAfter.getTime() < Date.now()
        ? "the client certificate has expired"
        : "the client certificate expires within 7 days",
    );
  }

  // Loaded only now, after heap.ts limited the heap's growth: the agent's module graph
  // (Connect, protobuf, SQLite, metrics) is most of what start-up allocates. `--help` and a
  // configuration error never load it.
  const agent: Agent = new (await import("./agent.js")).Agent({ config, tls, log });
  let stopping: Promise<void> | undefined;
  const exitCode = new Promise<number>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        log.warn(
          { event: "forced_exit", signal },
          "second signal: exiting at once (the journal resumes any deployment)",
        );
        resolve(EXIT_FORCED);
        return;
      }
      log.info({ event: "signal", signal }, `received ${signal}; stopping`);
      const deadline = setTimeout(() => {
        log.error(
          { event: "stop_timeout" },
          `could not stop within ${STOP_DEADLINE_MS / 1000} s; exiting anyway`,
        );
        resolve(EXIT_FAILURE);
      }, STOP_DEADLINE_MS);
      deadline.unref();
      stopping = agent.stop().then(
        () => resolve(EXIT_OK),
        (err: Error) => {
          log.error({ event: "stop_failed", error: err.message }, "error while stopping");
          resolve(EXIT_FAILURE);
        },
      );
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
    // The unit's ExecReload (reloadIfChanged): stop cleanly; Restart=always starts the new
    // package and configuration, and the journal resumes whatever was running.
    process.on("SIGHUP", onSignal);
    agent.start().catch((err: Error) => {
      log.fatal({ event: "fatal", error: err.stack ?? err.message }, `cannot run: ${err.message}`);
      resolve(EXIT_FAILURE);
    });
  });
  return exitCode;
}

// Run when executed directly (node/tsx, or the nixfleet-agent bin), not when imported.
if (isMainModule(import.meta.url)) {
  main(process.argv).then(
    (code) => process.exit(code),
    (err: Error) => {
      process.stderr.write(`nixfleet-agent: fatal: ${err.stack ?? err.message}\n`);
      process.exit(EXIT_FAILURE);
    },
  );
}
