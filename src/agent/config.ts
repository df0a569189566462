/**
 * The agent's configuration: one JSON file (written by the NixOS module, keys are the module's
 * option names), overridden by `NIXFLEET_*` environment variables, overridden by flags.
 *
 * Every option is declared once, in config/options.ts, as a zod schema with its default and
 * documentation; the flag, the variable, `--help`, the defaults, the type below and the options
 * reference in docs/operations-agent.md are derived from it (config/README of the folder: the
 * module comments).
 *
 * Parsing is strict on purpose: the agent runs as root and acts on what it reads, so an unknown
 * key (a typo, a snake_case spelling, an option of a newer version) is an error naming the key
 * and where it came from, never silently ignored. `parseAgentConfig` does no I/O so another
 * program (the NixOS module's tests) can check the JSON the module renders.
 */
import { parseDuration } from "../common/duration.js";
import type { AgentConfig } from "./config/schema.js";

export { ConfigError } from "./config/errors.js";
export { DEFAULT_CONFIG_PATH, type LoadedConfig, type LoadOptions, loadAgentConfig } from "./config/load.js";
export { ACTIVATION_MODES, type ActivationMode, PROTOCOLS, type Protocol } from "./config/options.js";
export { parseAgentConfig } from "./config/parse.js";
export type { AgentConfig } from "./config/schema.js";
export { DEFAULTS, OPTIONS, type OptionSpec } from "./config/table.js";

export type HealthChecksConfig = AgentConfig["healthChecks"];
export type SystemdCheckConfig = HealthChecksConfig["systemd"][number];
export type HttpCheckConfig = HealthChecksConfig["http"][number];
export type CommandCheckConfig = HealthChecksConfig["command"][number];

/** The shared duration parser (src/common/duration.ts), under the name this module used to export. */
export const parseDurationString: (text: string) => number | undefined = parseDuration;
