/** What every command gets: settings resolved lazily (so --help works anywhere), a client, output. */
import type { Command } from "commander";
import { createFleetClient, type FleetClient } from "./client.js";
import { UsageError } from "./errors.js";
import { consoleOutput, type Output } from "./output.js";
import { type FileSettings, resolveSettings, type Settings } from "./settings.js";

export interface GlobalOptions {
  controlPlaneUrl?: string;
  apiKey?: string;
  caCert?: string;
  clientCert?: string;
  clientKey?: string;
  protocol?: string;
  timeout?: string;
  config?: string;
  json?: boolean;
  output?: string;
}

/** --json, or its kubectl/gh spelling -o json. */
export function wantsJson(g: Pick<GlobalOptions, "json" | "output">): boolean {
  if (g.output !== undefined && g.output !== "json" && g.output !== "table")
    throw new UsageError(`-o/--output must be json or table; got ${JSON.stringify(g.output)}`);
  if (g.json && g.output === "table") throw new UsageError("--json and -o table contradict each other");
  return Boolean(g.json) || g.output === "json";
}

export interface Context {
  output: Output;
  settings(): Settings;
  client(): FleetClient;
  /** Per-call options: the deadline from --timeout. */
  call(): { timeoutMs: number };
}

export function contextFor(command: Command): Context {
  const g = command.optsWithGlobals<GlobalOptions>();
  let settings: Settings | undefined;
  let client: FleetClient | undefined;
  const flags: FileSettings = {};
  if (g.controlPlaneUrl !== undefined) flags.controlPlaneUrl = g.controlPlaneUrl;
  if (g.apiKey !== undefined) flags.apiKey = g.apiKey;
  if (g.caCert !== undefined) flags.caCert = g.caCert;
  if (g.clientCert !== undefined) flags.clientCert = g.clientCert;
  if (g.clientKey !== undefined) flags.clientKey = g.clientKey;
  if (g.protocol !== undefined) flags.protocol = g.protocol;
  if (g.timeout !== undefined) flags.timeout = g.timeout;
  const ctx: Context = {
    output: consoleOutput(wantsJson(g)),
    settings: () => {
      settings ??= resolveSettings({ flags, configFile: g.config });
      return settings;
    },
    client: () => {
      client ??= createFleetClient(ctx.settings());
      return client;
    },
    call: () => ({ timeoutMs: ctx.settings().timeoutMs }),
  };
  return ctx;
}
