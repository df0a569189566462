/** `nixfleet config`: which control plane and credentials a command would use, and from where. */
import type { Command } from "commander";
import { contextFor } from "../context.js";
import { runAction } from "../run.js";
import { findProjectFile, userConfigPath } from "../settings.js";

export function registerConfig(program: Command): void {
  program
    .command("config")
    .description(
      "show the settings in effect and where each came from (flags > env > user file > project file)",
    )
    .action(
      runAction(async (_opts: unknown, cmd: Command) => {
        const ctx = contextFor(cmd);
        const s = ctx.settings();
        const shown = {
          controlPlaneUrl: s.controlPlaneUrl,
          apiKey: s.apiKey ? `${s.apiKey.slice(0, 8)}… (hidden)` : undefined,
          caCert: s.caCert,
          clientCert: s.clientCert,
          clientKey: s.clientKey,
          protocol: s.protocol,
          timeout: `${s.timeoutMs / 1000}s`,
        };
        if (ctx.output.json) {
          ctx.output.out(JSON.stringify({ settings: shown, sources: s.sources }, null, 2));
          return;
        }
        for (const [k, v] of Object.entries(shown)) {
          const src =
            s.sources[k as keyof typeof s.sources] ??
            (k === "timeoutSeconds" ? s.sources.timeout : undefined);
          ctx.output.out(
            `${`${k}:`.padEnd(17)}${v ?? "-"}${src ? `   (${src})` : v !== undefined ? "   (default)" : ""}`,
          );
        }
        ctx.output.out(`\nuser file:    ${userConfigPath()}`);
        ctx.output.out(`project file: ${findProjectFile(process.cwd()) ?? "none found (.nixfleet.json)"}`);
      }),
    );
}
