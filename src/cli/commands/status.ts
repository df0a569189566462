/** `nixfleet status`: the fleet table, from GetFleetStatus (the one authoritative per-host record). */
import type { Command } from "commander";
import {
  GetFleetStatusResponseSchema,
  HealthState,
  type MachineStatus,
  TagMatch,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle, MachineLifecycleSchema, OutcomeSchema } from "../../gen/nixfleet/v1/types_pb.js";
import { type Context, contextFor } from "../context.js";
import { UsageError } from "../errors.js";
import { ago, enumWord, printJson, shortPath, table } from "../output.js";
import { parseSeconds, parseTags } from "../parse.js";
import { runAction } from "../run.js";

function health(m: MachineStatus): string {
  const h = m.health;
  if (!h || h.state === HealthState.UNKNOWN || h.state === HealthState.UNSPECIFIED) return "unknown";
  const onCurrent = h.generation === m.currentGeneration ? "" : " (older gen)";
  if (h.state === HealthState.HEALTHY) return `healthy${onCurrent}`;
  return `UNHEALTHY${h.failingChecks.length ? `: ${h.failingChecks.join(", ")}` : ""}${onCurrent}`;
}

export function statusRows(machines: MachineStatus[], now = Date.now()): string[][] {
  return machines.map((m) => [
    m.machineId,
    enumWord(OutcomeSchema, m.lastOutcome),
    enumWord(MachineLifecycleSchema, m.lifecycle),
    !m.desiredGeneration ? "-" : m.inSync ? "in sync" : "OUTDATED",
    shortPath(m.currentGeneration),
    shortPath(m.desiredGeneration),
    health(m),
    `${ago(m.lastSeen, now)}${m.stale ? " (STALE)" : ""}${m.connected ? "" : m.lastSeen ? " offline" : ""}`,
    m.activeRolloutId ? `${m.activeRolloutId} b${m.activeBatch + 1}` : "-",
  ]);
}

export const STATUS_HEAD = [
  "HOST",
  "STATE",
  "LIFECYCLE",
  "SYNC",
  "CURRENT",
  "DESIRED",
  "HEALTH",
  "LAST SEEN",
  "ROLLOUT",
];

async function once(ctx: Context, tags: string[], matchAny: boolean): Promise<string> {
  const res = await ctx
    .client()
    .getFleetStatus({ tags, match: matchAny ? TagMatch.ANY : TagMatch.ALL }, ctx.call());
  if (ctx.output.json) {
    printJson(ctx.output, GetFleetStatusResponseSchema, res);
    return "";
  }
  if (res.machines.length === 0)
    return tags.length ? `no machines match tags ${tags.join(",")}` : "no machines registered yet";
  // Decommissioned machines are listed but not counted: they are not expected to be in sync.
  const counted = res.machines.filter((m) => m.lifecycle !== MachineLifecycle.DECOMMISSIONED);
  const retired = res.machines.length - counted.length;
  const footer = [
    `${counted.filter((m) => m.inSync).length}/${counted.length} hosts in sync${retired ? ` (${retired} decommissioned not counted)` : ""}`,
  ];
  if (res.stale) footer.push(`${res.stale} stale (no contact for ${res.staleAfterSeconds}s)`);
  const unhealthy = res.machines.filter((m) => m.health?.state === HealthState.UNHEALTHY).length;
  if (unhealthy) footer.push(`${unhealthy} unhealthy`);
  return `${table(STATUS_HEAD, statusRows(res.machines))}\n\n${footer.join(", ")}`;
}

export function registerStatus(program: Command): void {
  program
    .command("status")
    .description("show every host: desired vs current generation, health, last contact, rollout")
    .option("--tags <tags>", "only hosts with these tags (comma-separated)")
    .option("--match <all|any>", "with --tags: hosts having all the tags or any of them", "all")
    .option("--watch", "refresh until interrupted")
    .option("--interval <duration>", "refresh interval for --watch", "2s")
    .action(
      runAction(
        async (opts: { tags?: string; match: string; watch?: boolean; interval: string }, cmd: Command) => {
          const ctx = contextFor(cmd);
          const tags = parseTags(opts.tags);
          if (opts.match !== "all" && opts.match !== "any")
            throw new UsageError(`--match must be all or any; got ${opts.match}`);
          const interval = parseSeconds(opts.interval, "--interval", 3600) || 1;
          if (!opts.watch) {
            const text = await once(ctx, tags, opts.match === "any");
            if (text) ctx.output.out(text);
            return;
          }
          const tty = process.stdout.isTTY && !ctx.output.json;
          for (;;) {
            const text = await once(ctx, tags, opts.match === "any");
            if (tty) process.stdout.write("\x1b[H\x1b[2J");
            if (text)
              ctx.output.out(tty ? `${text}\n\n(refreshing every ${interval}s; Ctrl-C to stop)` : text);
            await new Promise((r) => setTimeout(r, interval * 1000));
          }
        },
      ),
    );
}
