/** `nixfleet keys …`: API keys (admin). */
import type { Command } from "commander";
import { keyNameProblem } from "../../common/ids.js";
import {
  type ApiKeyRole,
  ApiKeyRoleSchema,
  CreateApiKeyResponseSchema,
  ListApiKeysResponseSchema,
  RevokeApiKeyResponseSchema,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import { contextFor } from "../context.js";
import { UsageError } from "../errors.js";
import { ago, enumChoices, enumWord, isoTime, parseEnumWord, printJson, table } from "../output.js";
import { runAction } from "../run.js";

export function registerKeys(program: Command): void {
  const keys = program.command("keys").description("manage API keys (admin role)");

  keys
    .command("create")
    .description("create a key; the secret is printed once (alone on stdout, for scripts)")
    .requiredOption("--name <name>", "a unique name, e.g. ci-deploy")
    .requiredOption("--role <role>", enumChoices(ApiKeyRoleSchema).join(" | "))
    .action(
      runAction(async (opts: { name: string; role: string }, cmd: Command) => {
        const ctx = contextFor(cmd);
        const problem = keyNameProblem(opts.name);
        if (problem) throw new UsageError(`--name: ${problem}`);
        const role = parseEnumWord(ApiKeyRoleSchema, opts.role, "--role") as ApiKeyRole;
        const res = await ctx.client().createApiKey({ name: opts.name, role }, ctx.call());
        if (ctx.output.json) return printJson(ctx.output, CreateApiKeyResponseSchema, res);
        ctx.output.out(res.secret);
        ctx.output.err(
          `created ${enumWord(ApiKeyRoleSchema, res.apiKey!.role)} key "${res.apiKey!.name}" (${res.apiKey!.id}); store the secret now, it is not shown again`,
        );
      }),
    );

  keys
    .command("list")
    .description("keys (without secrets)")
    .option("--all", "include revoked keys")
    .action(
      runAction(async (opts: { all?: boolean }, cmd: Command) => {
        const ctx = contextFor(cmd);
        const res = await ctx.client().listApiKeys({ includeRevoked: Boolean(opts.all) }, ctx.call());
        if (ctx.output.json) return printJson(ctx.output, ListApiKeysResponseSchema, res);
        if (res.apiKeys.length === 0) return ctx.output.out("no keys");
        ctx.output.out(
          table(
            ["ID", "NAME", "ROLE", "CREATED", "BY", "LAST USED", "REVOKED"],
            res.apiKeys.map((k) => [
              k.id,
              k.name,
              enumWord(ApiKeyRoleSchema, k.role),
              isoTime(k.createdAt),
              k.createdBy || "-",
              k.lastUsedAt ? ago(k.lastUsedAt) : "never",
              k.revokedAt ? isoTime(k.revokedAt) : "-",
            ]),
          ),
        );
      }),
    );

  keys
    .command("revoke <key>")
    .description("revoke a key by id or name (effective immediately)")
    .action(
      runAction(async (key: string, _opts: unknown, cmd: Command) => {
        const ctx = contextFor(cmd);
        const res = await ctx.client().revokeApiKey({ key }, ctx.call());
        if (ctx.output.json) return printJson(ctx.output, RevokeApiKeyResponseSchema, res);
        ctx.output.out(`revoked key "${res.apiKey!.name}" (${res.apiKey!.id})`);
      }),
    );
}
