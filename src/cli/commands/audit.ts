/** `nixfleet audit`: who changed what, newest first. */
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import { type AuditEvent, ListAuditEventsResponseSchema } from "../../gen/nixfleet/v1/fleet_pb.js";
import { contextFor } from "../context.js";
import { isoTime, printJson, table } from "../output.js";
import { parsePositiveInt, parseSeconds } from "../parse.js";
import { runAction } from "../run.js";

interface AuditOpts {
  actor?: string;
  action?: string;
  target?: string;
  since?: string;
  limit: string;
}

export function registerAudit(program: Command): void {
  program
    .command("audit")
    .description("the audit log: every mutation, who made it, newest first")
    .option("--actor <actor>", 'e.g. "apikey:ci", "machine:web-01", "executor"')
    .option("--action <action>", 'e.g. "rollout.create"')
    .option("--target <id>", "a machine, release or rollout id")
    .option("--since <duration>", "only events newer than this, e.g. 1h")
    .option("--limit <n>", "at most this many events", "50")
    .action(
      runAction(async (opts: AuditOpts, cmd: Command) => {
        const ctx = contextFor(cmd);
        const limit = parsePositiveInt(opts.limit, "--limit", 100_000);
        const since = opts.since
          ? timestampFromMs(Date.now() - parseSeconds(opts.since, "--since", 10 * 365 * 86400) * 1000)
          : undefined;
        const events: AuditEvent[] = [];
        let pageToken = "";
        do {
          const res = await ctx.client().listAuditEvents(
            {
              actor: opts.actor ?? "",
              action: opts.action ?? "",
              target: opts.target ?? "",
              since,
              pageSize: Math.min(1000, limit - events.length),
              pageToken,
            },
            ctx.call(),
          );
          events.push(...res.events);
          pageToken = res.nextPageToken;
        } while (pageToken && events.length < limit);
        if (ctx.output.json) {
          return printJson(ctx.output, ListAuditEventsResponseSchema, {
            $typeName: "nixfleet.v1.ListAuditEventsResponse",
            events,
            nextPageToken: "",
          });
        }
        if (events.length === 0) return ctx.output.out("no audit events match");
        ctx.output.out(
          table(
            ["TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"],
            events.map((e) => [isoTime(e.timestamp), e.actor, e.action, e.target, e.detail]),
          ),
        );
      }),
    );
}
