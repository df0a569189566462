/** Wraps a command action: any error becomes a message on stderr and a meaningful exit code. */
import type { Command } from "commander";
import { contextFor } from "./context.js";
import { describeError, EXIT_FAILURE } from "./errors.js";

// biome-ignore lint/suspicious/noExplicitAny: commander passes positional args, then options, then the command.
export function runAction<A extends any[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      const cmd = args[args.length - 1] as Command;
      let url = "(not configured)";
      try {
        url = contextFor(cmd).settings().controlPlaneUrl;
      } catch {
        // the settings themselves are what failed; the error says so
      }
      const { lines, exitCode } = describeError(err, url);
      for (const line of lines) process.stderr.write(`${line}\n`);
      process.exitCode = exitCode ?? EXIT_FAILURE;
    }
  };
}
