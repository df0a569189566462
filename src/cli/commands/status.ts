/**
 * `nixfleet status`: the fleet table, from GetFleetStatus (the one authoritative per-host record).
 * `--watch` follows WatchFleet instead — one snapshot, then only what changed — and polls
 * GetFleetStatus only against a control plane too old to have it.
 */

import { create, toJson } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Command } from "commander";
import { FleetView } from "../../common/fleet-view.js";
import {
  type GetFleetStatusResponse,
  GetFleetStatusResponseSchema,
  HealthState,
  type MachineStatus,
  TagMatch,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle, MachineLifecycleSchema, OutcomeSchema } from "../../gen/nixfleet/v1/types_pb.js";
import { type Context, contextFor } from "../context.js";
import { UsageError } from "../errors.js";
import { ago, enumWord, shortPath, table } from "../output.js";
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

/**
 * `status --json`: the response as protobuf JSON, except that `activeBatch` is 1-based like the
 * table's `b1` and present whenever `activeRolloutId` is (the API's field is a 0-based index
 * that protobuf JSON leaves out when it is 0, the first batch).
 */
export function statusJson(res: GetFleetStatusResponse): unknown {
  const json = toJson(GetFleetStatusResponseSchema, res) as { machines?: Record<string, unknown>[] };
  res.machines.forEach((m, i) => {
    const out = json.machines?.[i];
    if (!out) return;
    if (m.activeRolloutId) out["activeBatch"] = m.activeBatch + 1;
    else delete out["activeBatch"];
  });
  return json;
}

/**
 * "2/3 hosts in sync, …": in sync counts hosts that have a generation assigned; a host with
 * nothing assigned is not out of sync (there is nothing to be in sync with), nor is a
 * decommissioned one. Both are listed, and said apart.
 */
export function statusFooter(res: GetFleetStatusResponse): string {
  const live = res.machines.filter((m) => m.lifecycle !== MachineLifecycle.DECOMMISSIONED);
  const retired = res.machines.length - live.length;
  const assigned = live.filter((m) => m.desiredGeneration);
  const unassigned = live.length - assigned.length;
  const notCounted = [
    ...(unassigned ? [`${unassigned} with nothing assigned`] : []),
    ...(retired ? [`${retired} decommissioned`] : []),
  ];
  const footer = [
    `${assigned.filter((m) => m.inSync).length}/${assigned.length} hosts in sync` +
      (notCounted.length ? ` (${notCounted.join(", ")} not counted)` : ""),
  ];
  if (res.stale) footer.push(`${res.stale} stale (no contact for ${res.staleAfterSeconds}s)`);
  const unhealthy = res.machines.filter((m) => m.health?.state === HealthState.UNHEALTHY).length;
  if (unhealthy) footer.push(`${unhealthy} unhealthy`);
  return footer.join(", ");
}

function render(ctx: Context, res: GetFleetStatusResponse, tags: string[]): string {
  if (ctx.output.json) {
    ctx.output.out(JSON.stringify(statusJson(res), null, 2));
    return "";
  }
  if (res.machines.length === 0)
    return tags.length ? `no machines match tags ${tags.join(",")}` : "no machines registered yet";
  return `${table(STATUS_HEAD, statusRows(res.machines))}\n\n${statusFooter(res)}`;
}

async function once(ctx: Context, tags: string[], matchAny: boolean): Promise<string> {
  const res = await ctx
    .client()
    .getFleetStatus({ tags, match: matchAny ? TagMatch.ANY : TagMatch.ALL }, ctx.call());
  return render(ctx, res, tags);
}

interface WatchOptions {
  tags: string[];
  matchAny: boolean;
  /** Polling interval against a control plane without WatchFleet. */
  intervalS: number;
  tty: boolean;
}

const RETRYABLE = new Set([Code.Unavailable, Code.Internal, Code.Unknown, Code.Aborted]);
/** Changes arrive in bursts (a rollout's batch): draw at most this often. */
const REDRAW_MS = 250;

function show(ctx: Context, text: string, o: WatchOptions, footer: string): void {
  if (o.tty) process.stdout.write("\x1b[H\x1b[2J");
  if (text) ctx.output.out(o.tty ? `${text}\n\n(${footer}; Ctrl-C to stop)` : text);
}

async function poll(ctx: Context, o: WatchOptions): Promise<never> {
  for (;;) {
    show(ctx, await once(ctx, o.tags, o.matchAny), o, `refreshing every ${o.intervalS}s`);
    await new Promise((r) => setTimeout(r, o.intervalS * 1000));
  }
}

/** Follows WatchFleet until interrupted, reconnecting (and resuming) when the stream breaks. */
async function follow(ctx: Context, o: WatchOptions): Promise<never> {
  const view = new FleetView();
  let timer: NodeJS.Timeout | null = null;
  let pending = false;
  const draw = () => {
    const res = create(GetFleetStatusResponseSchema, {
      machines: view.list(),
      ...view.summary(),
      staleAfterSeconds: view.staleAfterSeconds,
    });
    show(ctx, render(ctx, res, o.tags), o, "following changes");
  };
  const redraw = () => {
    if (timer) {
      pending = true;
      return;
    }
    draw();
    timer = setTimeout(() => {
      timer = null;
      if (pending) {
        pending = false;
        redraw();
      }
    }, REDRAW_MS);
  };
  let backoffMs = 500;
  for (;;) {
    const call = new AbortController();
    try {
      const stream = ctx
        .client()
        .watchFleet(
          { tags: o.tags, match: o.matchAny ? TagMatch.ANY : TagMatch.ALL, ...view.resumePoint() },
          { signal: call.signal },
        );
      for await (const msg of stream) {
        backoffMs = 500;
        if (view.apply(msg)) redraw();
      }
    } catch (err) {
      const ce = ConnectError.from(err);
      if (ce.code === Code.Unimplemented && !view.epoch) return poll(ctx, o);
      if (!RETRYABLE.has(ce.code)) throw err;
      ctx.output.err(`lost the control plane (${ce.rawMessage}); reconnecting in ${backoffMs / 1000}s…`);
    } finally {
      call.abort();
    }
    await new Promise((r) => setTimeout(r, backoffMs));
    backoffMs = Math.min(backoffMs * 2, 10_000);
  }
}

export function registerStatus(program: Command): void {
  program
    .command("status")
    .description("show every host: desired vs current generation, health, last contact, rollout")
    .option("--tags <tags>", "only hosts with these tags (comma-separated)")
    .option("--match <all|any>", "with --tags: hosts having all the tags or any of them", "all")
    .option("--watch", "follow changes until interrupted (redrawn as they happen)")
    .option(
      "--interval <duration>",
      "with --watch against a control plane without WatchFleet: how often to re-read",
      "2s",
    )
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
          const tty = process.stdout.isTTY === true && !ctx.output.json;
          await follow(ctx, { tags, matchAny: opts.match === "any", intervalS: interval, tty });
        },
      ),
    );
}
