#!/usr/bin/env node
/** `nixfleet`: the operator CLI. Exit codes: 0 ok, 1 failure, 2 usage. */
import { Command, CommanderError } from "commander";
import { isMainModule } from "../common/entry.js";
import { VERSION } from "../common/version.js";
import { registerAudit } from "./commands/audit.js";
import { registerCompletion } from "./commands/completion.js";
import { registerConfig } from "./commands/config.js";
import { registerKeys } from "./commands/keys.js";
import { registerMachines } from "./commands/machines.js";
import { registerReleases } from "./commands/releases.js";
import { registerRollouts } from "./commands/rollouts.js";
import { registerStatus } from "./commands/status.js";
import { EXIT_OK, EXIT_USAGE } from "./errors.js";

export function buildProgram(): Command {
  const program = new Command("nixfleet")
    .description("Operate a nixfleet control plane: machines, releases, health-gated rollouts, fleet status.")
    .version(VERSION)
    .option(
      "-u, --control-plane-url <url>",
      "control plane URL, or several comma-separated tried in order (env NIXFLEET_CONTROL_PLANE_URL; default https://localhost:8443)",
    )
    .option("-k, --api-key <key>", "API key (env NIXFLEET_API_KEY)")
    .option(
      "--ca-cert <file>",
      "CA bundle that signed the control plane's certificate (env NIXFLEET_CA_CERT)",
    )
    .option(
      "--client-cert <file>",
      "client certificate, when the control plane asks for one (env NIXFLEET_CLIENT_CERT)",
    )
    .option("--client-key <file>", "key of --client-cert (env NIXFLEET_CLIENT_KEY)")
    .option("--protocol <grpc|connect>", "wire protocol (env NIXFLEET_PROTOCOL; default grpc)")
    .option("--timeout <duration>", "deadline per call, e.g. 30s (env NIXFLEET_TIMEOUT)")
    .option(
      "--config <file>",
      "settings file to use instead of ~/.config/nixfleet/config.json and .nixfleet.json",
    )
    .option("--json", "machine-readable output (protobuf JSON) for scripts")
    .option("-o, --output <format>", "json (same as --json) or table (the default), as in kubectl and gh")
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride();
  program.configureHelp({ sortSubcommands: false });
  registerStatus(program);
  registerMachines(program);
  registerReleases(program);
  registerRollouts(program);
  registerKeys(program);
  registerAudit(program);
  registerConfig(program);
  registerCompletion(program);
  for (const cmd of program.commands) {
    cmd.exitOverride();
    for (const sub of cmd.commands) sub.exitOverride();
  }
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: "user" });
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version are requests, not errors.
      if (
        err.code === "commander.helpDisplayed" ||
        err.code === "commander.version" ||
        err.code === "commander.help"
      )
        return EXIT_OK;
      return EXIT_USAGE;
    }
    throw err;
  }
  return typeof process.exitCode === "number" ? process.exitCode : EXIT_OK;
}

/**
 * Exits once stdout and stderr have flushed. A one-shot command should not linger on whatever
 * its HTTP/2 session manager still holds (a stream ended by abort can leave the session
 * referenced for minutes).
 */
function exitAfterFlush(code: number): void {
  let pending = 2;
  const done = () => {
    pending -= 1;
    if (pending === 0) process.exit(code);
  };
  process.stdout.write("", done);
  process.stderr.write("", done);
}

if (isMainModule(import.meta.url)) {
  main(process.argv.slice(2)).then(exitAfterFlush, (err: Error) => {
    process.stderr.write(`nixfleet: unexpected error: ${err.message}\n`);
    exitAfterFlush(1);
  });
}
