/** `nixfleet rollout …`: ship a release in health-gated batches, and follow it. */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Command } from "commander";
import {
  CancelRolloutResponseSchema,
  CreateRolloutResponseSchema,
  GetRolloutResponseSchema,
  ListRolloutsResponseSchema,
  type OnFailure,
  OnFailureSchema,
  PauseRolloutResponseSchema,
  ResumeRolloutResponseSchema,
  type Rollout,
  RolloutStatus,
  RolloutStatusSchema,
  RolloutStrategy,
  RolloutStrategySchema,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import { type Context, contextFor } from "../context.js";
import { CliFailure, EXIT_FAILURE, UsageError } from "../errors.js";
import { ago, duration, enumChoices, enumWord, isoTime, parseEnumWord, printJson, table } from "../output.js";
import {
  parseBatchSizes,
  parseMachineId,
  parseSeconds,
  parseTags,
  parseThreshold,
  splitList,
} from "../parse.js";
import { eventLine, finalVerdict, isTerminal, LiveBlock, rolloutLines } from "../progress.js";
import { runAction } from "../run.js";

interface StartOpts {
  release: string;
  tags?: string;
  hosts?: string;
  strategy?: string;
  batchSize?: string;
  failureThreshold: string;
  onFailure: string;
  healthTimeout: string;
  soak: string;
  cacheUrl?: string;
  wait?: boolean;
  waitTimeout?: string;
}

const RETRYABLE = new Set([Code.Unavailable, Code.Internal, Code.Unknown, Code.Aborted]);

/** --wait ends when the rollout ends or pauses (a pause needs a human, so scripts must stop too). */
function stopsWaiting(status: RolloutStatus): boolean {
  return isTerminal(status) || status === RolloutStatus.PAUSED;
}

/**
 * Follows WatchRollout until the rollout ends, reconnecting when the control plane goes away
 * (e.g. restarted mid-rollout). Returns the last snapshot.
 */
export async function followRollout(
  ctx: Context,
  id: string,
  waitTimeoutS: number | undefined,
): Promise<Rollout> {
  const deadline = waitTimeoutS ? Date.now() + waitTimeoutS * 1000 : Number.POSITIVE_INFINITY;
  const tty = Boolean(process.stdout.isTTY) && !ctx.output.json;
  const block = new LiveBlock(
    (s) => process.stdout.write(s),
    () => process.stdout.columns,
  );
  let last: Rollout | undefined;
  let seenEvent = 0n;
  let backoffMs = 500;
  const ticker = tty ? setInterval(() => last && block.render(rolloutLines(last)), 1000) : undefined;
  try {
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) break;
      // Our own controller ends the stream when we stop reading early: an abandoned HTTP/2
      // stream would keep the session, and so the process, alive.
      const call = new AbortController();
      const timedOut = Number.isFinite(remaining) ? AbortSignal.timeout(remaining) : undefined;
      const signal = timedOut ? AbortSignal.any([call.signal, timedOut]) : call.signal;
      try {
        for await (const msg of ctx.client().watchRollout({ rolloutId: id }, { signal })) {
          backoffMs = 500;
          const logs: string[] = [];
          if (msg.event && msg.event.id > seenEvent) {
            seenEvent = msg.event.id;
            logs.push(eventLine(msg.event));
          }
          const first = last === undefined;
          last = msg.rollout ?? last;
          if (!last) continue;
          if (tty) block.render(rolloutLines(last), logs);
          else if (!ctx.output.json) {
            if (first) ctx.output.out(rolloutLines(last)[0]!);
            for (const l of logs) ctx.output.out(l);
          }
          if (stopsWaiting(last.status)) return last;
        }
        // The stream ended without a terminal state: ask once, then follow again.
        const res = await ctx.client().getRollout({ rolloutId: id }, ctx.call());
        last = res.rollout ?? last;
        if (last && stopsWaiting(last.status)) return last;
      } catch (err) {
        if (timedOut?.aborted) break;
        const ce = ConnectError.from(err);
        if (!RETRYABLE.has(ce.code)) throw err;
        ctx.output.err(`lost the control plane (${ce.rawMessage}); reconnecting in ${backoffMs / 1000}s…`);
        await new Promise((r) => setTimeout(r, Math.min(backoffMs, Math.max(0, deadline - Date.now()))));
        backoffMs = Math.min(backoffMs * 2, 10_000);
      } finally {
        call.abort();
      }
    }
  } finally {
    if (ticker) clearInterval(ticker);
    block.done();
  }
  const state = last ? enumWord(RolloutStatusSchema, last.status) : "unknown";
  throw new CliFailure(
    `rollout ${id} is still ${state} after waiting ${duration(waitTimeoutS ?? 0)}`,
    `keep following it with: nixfleet rollout status ${id} --wait`,
  );
}

async function waitAndReport(ctx: Context, id: string, waitTimeout: string | undefined): Promise<void> {
  const timeout = waitTimeout ? parseSeconds(waitTimeout, "--wait-timeout", 7 * 86400) : undefined;
  const r = await followRollout(ctx, id, timeout || undefined);
  const verdict = finalVerdict(r);
  // The same {"rollout": …} shape as `rollout status --json`.
  if (ctx.output.json)
    printJson(ctx.output, GetRolloutResponseSchema, create(GetRolloutResponseSchema, { rollout: r }));
  else for (const l of verdict.lines) (verdict.exitCode === 0 ? ctx.output.out : ctx.output.err)(l);
  if (verdict.exitCode !== 0) process.exitCode = EXIT_FAILURE;
}

function strategyFrom(opts: StartOpts): RolloutStrategy {
  if (!opts.strategy) return opts.batchSize ? RolloutStrategy.STAGED : RolloutStrategy.CANARY;
  const s = parseEnumWord(RolloutStrategySchema, opts.strategy, "--strategy") as RolloutStrategy;
  if (opts.batchSize && s !== RolloutStrategy.STAGED) {
    throw new UsageError(`--batch-size only applies to --strategy staged (got --strategy ${opts.strategy})`);
  }
  if (!opts.batchSize && s === RolloutStrategy.STAGED)
    throw new UsageError("--strategy staged needs --batch-size, e.g. 1,25%,100%");
  return s;
}

function rolloutDetail(r: Rollout): string {
  const head = [
    `rollout:   ${r.id}  (${enumWord(RolloutStatusSchema, r.status).toUpperCase()})`,
    `release:   ${r.releaseId}`,
    `target:    ${r.target?.tags.length ? `tags ${r.target.tags.join(",")}` : `hosts ${r.target?.hosts.join(",")}`}`,
    `strategy:  ${enumWord(RolloutStrategySchema, r.strategy)} (batches ${r.batchSizes.join(",") || "-"}), ` +
      `failure threshold ${r.failureThreshold || "0"}, on failure ${enumWord(OnFailureSchema, r.onFailure)}`,
    `health:    timeout ${duration(r.healthTimeoutSeconds)}${r.soakSeconds ? `, soak ${duration(r.soakSeconds)}` : ""}`,
    `created:   ${isoTime(r.createdAt)} by ${r.createdBy || "-"}`,
  ];
  return [...head, "", ...rolloutLines(r)].join("\n");
}

export function registerRollouts(program: Command): void {
  const rollout = program
    .command("rollout")
    .description("ship a release to machines in health-gated batches");

  rollout
    .command("start")
    .description("start a rollout of a release to machines selected by tags or names")
    .requiredOption("--release <id>", "the release to ship")
    .option("--tags <tags>", "machines having all these tags (comma-separated)")
    .option("--hosts <ids>", "these machines (comma-separated)")
    .option(
      "--strategy <s>",
      `${enumChoices(RolloutStrategySchema).join(" | ")} (default canary; staged with --batch-size)`,
    )
    .option("--batch-size <sizes>", "staged batch sizes: counts or percentages of the rest, e.g. 1,25%,100%")
    .option("--failure-threshold <n|p%>", "unhealthy machines a batch tolerates", "0")
    .option("--on-failure <pause|revert>", "what a failed batch does", "pause")
    .option("--health-timeout <duration>", "how long a batch waits for each machine to prove healthy", "300")
    .option("--soak <duration>", "how long a machine must stay healthy to count", "0")
    .option("--cache-url <url>", "override the release's binary cache")
    .option("--wait", "follow the rollout until it completes, pauses or fails")
    .option(
      "--wait-timeout <duration>",
      "with --wait: give up waiting after this long (the rollout continues)",
    )
    .action(
      runAction(async (opts: StartOpts, cmd: Command) => {
        const ctx = contextFor(cmd);
        const tags = parseTags(opts.tags);
        const hosts = splitList(opts.hosts).map((h) => parseMachineId(h, "--hosts entry"));
        if (tags.length > 0 === hosts.length > 0)
          throw new UsageError("give exactly one of --tags or --hosts");
        const strategy = strategyFrom(opts);
        const req = {
          releaseId: opts.release,
          target: { tags, hosts },
          strategy,
          batchSizes: opts.batchSize ? parseBatchSizes(opts.batchSize) : [],
          failureThreshold: parseThreshold(opts.failureThreshold),
          onFailure: parseEnumWord(OnFailureSchema, opts.onFailure, "--on-failure") as OnFailure,
          healthTimeoutSeconds: parseSeconds(opts.healthTimeout, "--health-timeout"),
          soakSeconds: parseSeconds(opts.soak, "--soak"),
          cacheUrl: opts.cacheUrl ?? "",
        };
        if (req.healthTimeoutSeconds === 0) throw new UsageError("--health-timeout must be at least 1s");
        const res = await ctx.client().createRollout(req, ctx.call());
        const r = res.rollout!;
        if (!opts.wait) {
          if (ctx.output.json) return printJson(ctx.output, CreateRolloutResponseSchema, res);
          ctx.output.out(rolloutDetail(r));
          ctx.output.out(`\nfollow it with: nixfleet rollout status ${r.id} --wait`);
          return;
        }
        if (!ctx.output.json)
          ctx.output.out(`started ${r.id} (${r.batches.length} batch${r.batches.length === 1 ? "" : "es"})`);
        await waitAndReport(ctx, r.id, opts.waitTimeout);
      }),
    );

  rollout
    .command("list")
    .description("rollouts, newest first")
    .option(
      "--status <status>",
      `only rollouts in this status (${enumChoices(RolloutStatusSchema).join(", ")})`,
    )
    .option("--release <id>", "only rollouts of this release")
    .action(
      runAction(async (opts: { status?: string; release?: string }, cmd: Command) => {
        const ctx = contextFor(cmd);
        const status = opts.status
          ? (parseEnumWord(RolloutStatusSchema, opts.status, "--status") as RolloutStatus)
          : RolloutStatus.UNSPECIFIED;
        const res = await ctx.client().listRollouts({ status, releaseId: opts.release ?? "" }, ctx.call());
        if (ctx.output.json) return printJson(ctx.output, ListRolloutsResponseSchema, res);
        if (res.rollouts.length === 0) return ctx.output.out("no rollouts");
        ctx.output.out(
          table(
            ["ID", "STATUS", "STRATEGY", "BATCH", "RELEASE", "CREATED", "BY"],
            res.rollouts.map((r) => [
              r.id,
              enumWord(RolloutStatusSchema, r.status),
              enumWord(RolloutStrategySchema, r.strategy),
              `${Math.min(r.currentBatch + 1, r.batches.length)}/${r.batches.length}`,
              r.releaseId,
              ago(r.createdAt),
              r.createdBy || "-",
            ]),
          ),
        );
      }),
    );

  rollout
    .command("status <id>")
    .alias("show")
    .description("a rollout's batches, machines and events (--wait follows it live)")
    .option("--wait", "follow until it completes, pauses or fails")
    .option("--wait-timeout <duration>", "with --wait: give up waiting after this long")
    .action(
      runAction(async (id: string, opts: { wait?: boolean; waitTimeout?: string }, cmd: Command) => {
        const ctx = contextFor(cmd);
        if (opts.wait) return waitAndReport(ctx, id, opts.waitTimeout);
        const res = await ctx.client().getRollout({ rolloutId: id }, ctx.call());
        if (ctx.output.json) return printJson(ctx.output, GetRolloutResponseSchema, res);
        ctx.output.out(rolloutDetail(res.rollout!));
        if (res.events.length) {
          ctx.output.out("\nevents:");
          for (const e of res.events.slice(-20)) ctx.output.out(`  ${eventLine(e)}`);
        }
        const r = res.rollout!;
        if (r.status === RolloutStatus.PAUSED)
          for (const l of finalVerdict(r).lines.slice(1)) ctx.output.out(l);
      }),
    );

  rollout
    .command("pause <id>")
    .description("stop promoting batches (machines keep what they were given)")
    .option("--reason <text>", "recorded with the pause")
    .action(
      runAction(async (id: string, opts: { reason?: string }, cmd: Command) => {
        const ctx = contextFor(cmd);
        const res = await ctx.client().pauseRollout({ rolloutId: id, reason: opts.reason ?? "" }, ctx.call());
        if (ctx.output.json) return printJson(ctx.output, PauseRolloutResponseSchema, res);
        ctx.output.out(`paused ${id}; resume with: nixfleet rollout resume ${id}`);
      }),
    );

  rollout
    .command("resume <id>")
    .description("continue a paused rollout; a failed batch is deployed again")
    .option("--wait", "follow until it completes, pauses or fails")
    .option("--wait-timeout <duration>", "with --wait: give up waiting after this long")
    .action(
      runAction(async (id: string, opts: { wait?: boolean; waitTimeout?: string }, cmd: Command) => {
        const ctx = contextFor(cmd);
        const res = await ctx.client().resumeRollout({ rolloutId: id }, ctx.call());
        if (opts.wait) return waitAndReport(ctx, id, opts.waitTimeout);
        if (ctx.output.json) return printJson(ctx.output, ResumeRolloutResponseSchema, res);
        ctx.output.out(`resumed ${id}; follow it with: nixfleet rollout status ${id} --wait`);
      }),
    );

  rollout
    .command("cancel <id>")
    .description("end a rollout; --revert gives every machine it touched its previous generation back")
    .option("--revert", "restore the previous desired generations")
    .option("--reason <text>", "recorded with the cancellation")
    .action(
      runAction(async (id: string, opts: { revert?: boolean; reason?: string }, cmd: Command) => {
        const ctx = contextFor(cmd);
        const res = await ctx
          .client()
          .cancelRollout(
            { rolloutId: id, revert: Boolean(opts.revert), reason: opts.reason ?? "" },
            ctx.call(),
          );
        if (ctx.output.json) return printJson(ctx.output, CancelRolloutResponseSchema, res);
        ctx.output.out(
          opts.revert
            ? `cancelled ${id}; machines it touched are being given their previous generations back`
            : `cancelled ${id}; machines keep the generation they were given (use --revert to restore)`,
        );
      }),
    );

  rollout
    .command("watch <id>")
    .description("follow a rollout live (same as status --wait)")
    .option("--wait-timeout <duration>", "give up waiting after this long")
    .action(
      runAction(async (id: string, opts: { waitTimeout?: string }, cmd: Command) =>
        waitAndReport(contextFor(cmd), id, opts.waitTimeout),
      ),
    );
}
