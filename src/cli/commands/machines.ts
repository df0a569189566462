/** `nixfleet machines …`: the registry. */
import type { Command } from "commander";
import {
  ClearDesiredGenerationResponseSchema,
  GetMachineResponseSchema,
  ListMachinesResponseSchema,
  type Machine,
  RegisterMachineResponseSchema,
  SetDesiredGenerationResponseSchema,
  SetMachineLifecycleResponseSchema,
  TagMatch,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle, MachineLifecycleSchema, OutcomeSchema } from "../../gen/nixfleet/v1/types_pb.js";
import { contextFor } from "../context.js";
import { UsageError } from "../errors.js";
import {
  ago,
  enumChoices,
  enumWord,
  isoTime,
  parseEnumWord,
  printJson,
  shortPath,
  table,
} from "../output.js";
import { parseMachineId, parseStorePathArg, parseTags } from "../parse.js";
import { runAction } from "../run.js";

function machineDetail(m: Machine): string {
  const rows: [string, string][] = [
    ["machine", m.machineId],
    ["lifecycle", enumWord(MachineLifecycleSchema, m.lifecycle)],
    ["tags", m.tags.join(", ") || "-"],
    ["current", m.currentGeneration || "-"],
    ["desired", m.desiredGeneration?.hash || "-"],
    ["desired cache", m.desiredGeneration?.cacheUrl || "-"],
    ["desired revision", m.desiredGeneration ? String(m.desiredGeneration.revision) : "-"],
    ["last outcome", enumWord(OutcomeSchema, m.lastOutcome)],
    ["last message", m.lastMessage || "-"],
    ["last seen", m.lastSeen ? `${isoTime(m.lastSeen)} (${ago(m.lastSeen)})` : "never"],
    ["connected", m.connected ? "yes (push stream open)" : "no"],
    ["agent version", m.agentVersion || "-"],
    ["registered", isoTime(m.registeredAt)],
  ];
  return rows.map(([k, v]) => `${`${k}:`.padEnd(18)}${v}`).join("\n");
}

function lifecycleArg(word: string, flag: string): MachineLifecycle {
  return parseEnumWord(MachineLifecycleSchema, word, flag) as MachineLifecycle;
}

export function registerMachines(program: Command): void {
  const machines = program.command("machines").description("list, register and manage machines");

  machines
    .command("list")
    .description("list machines (all pages)")
    .option("--tags <tags>", "only machines with these tags (comma-separated)")
    .option("--match <all|any>", "with --tags: machines having all the tags or any of them", "all")
    .option(
      "--lifecycle <state>",
      `only machines in this lifecycle (${enumChoices(MachineLifecycleSchema).join(", ")})`,
    )
    .action(
      runAction(async (opts: { tags?: string; match: string; lifecycle?: string }, cmd: Command) => {
        const ctx = contextFor(cmd);
        if (opts.match !== "all" && opts.match !== "any")
          throw new UsageError(`--match must be all or any; got ${opts.match}`);
        const tags = parseTags(opts.tags);
        const lifecycle = opts.lifecycle
          ? lifecycleArg(opts.lifecycle, "--lifecycle")
          : MachineLifecycle.UNSPECIFIED;
        const all: Machine[] = [];
        let pageToken = "";
        do {
          const res = await ctx
            .client()
            .listMachines(
              { tags, match: opts.match === "any" ? TagMatch.ANY : TagMatch.ALL, lifecycle, pageToken },
              ctx.call(),
            );
          all.push(...res.machines);
          pageToken = res.nextPageToken;
        } while (pageToken);
        if (ctx.output.json) {
          printJson(ctx.output, ListMachinesResponseSchema, {
            $typeName: "nixfleet.v1.ListMachinesResponse",
            machines: all,
            nextPageToken: "",
          });
          return;
        }
        if (all.length === 0) {
          ctx.output.out(
            tags.length ? `no machines match tags ${tags.join(",")} (--match ${opts.match})` : "no machines",
          );
          return;
        }
        ctx.output.out(
          table(
            ["ID", "LIFECYCLE", "STATE", "CURRENT", "TAGS", "LAST SEEN", "PUSH"],
            all.map((m) => [
              m.machineId,
              enumWord(MachineLifecycleSchema, m.lifecycle),
              enumWord(OutcomeSchema, m.lastOutcome),
              shortPath(m.currentGeneration),
              m.tags.join(",") || "-",
              ago(m.lastSeen),
              m.connected ? "connected" : "-",
            ]),
          ),
        );
        ctx.output.out(`\n${all.length} machine${all.length === 1 ? "" : "s"}`);
      }),
    );

  machines
    .command("show <id>")
    .description("one machine in detail")
    .action(
      runAction(async (id: string, _opts: unknown, cmd: Command) => {
        const ctx = contextFor(cmd);
        const res = await ctx.client().getMachine({ machineId: parseMachineId(id) }, ctx.call());
        if (ctx.output.json) printJson(ctx.output, GetMachineResponseSchema, res);
        else ctx.output.out(machineDetail(res.machine!));
      }),
    );

  machines
    .command("register <id>")
    .description("pre-register a machine (or replace the tags of a known one)")
    .option("--tags <tags>", "tags (comma-separated)")
    .option("--lifecycle <state>", "pending (default), active or maintenance")
    .action(
      runAction(async (id: string, opts: { tags?: string; lifecycle?: string }, cmd: Command) => {
        const ctx = contextFor(cmd);
        const req = {
          machineId: parseMachineId(id),
          tags: parseTags(opts.tags),
          lifecycle: opts.lifecycle
            ? lifecycleArg(opts.lifecycle, "--lifecycle")
            : MachineLifecycle.UNSPECIFIED,
        };
        const res = await ctx.client().registerMachine(req, ctx.call());
        if (ctx.output.json) return printJson(ctx.output, RegisterMachineResponseSchema, res);
        const m = res.machine!;
        ctx.output.out(
          `${res.created ? "registered" : "updated"} ${m.machineId} (${enumWord(MachineLifecycleSchema, m.lifecycle)}, tags: ${m.tags.join(",") || "none"})`,
        );
      }),
    );

  machines
    .command("set-lifecycle <id> <state>")
    .description(`move a machine to ${enumChoices(MachineLifecycleSchema).join(" | ")}`)
    .action(
      runAction(async (id: string, state: string, _opts: unknown, cmd: Command) => {
        const ctx = contextFor(cmd);
        const res = await ctx
          .client()
          .setMachineLifecycle(
            { machineId: parseMachineId(id), lifecycle: lifecycleArg(state, "state") },
            ctx.call(),
          );
        if (ctx.output.json) return printJson(ctx.output, SetMachineLifecycleResponseSchema, res);
        ctx.output.out(
          `${res.machine!.machineId} is now ${enumWord(MachineLifecycleSchema, res.machine!.lifecycle)}`,
        );
      }),
    );

  machines
    .command("set-desired <id> <store-path>")
    .description("one-off deploy: make one machine run a store path (pushed to its agent at once)")
    .option("--cache-url <url>", "binary cache the agent fetches from (default: the agent's own cacheUrl)")
    .action(
      runAction(async (id: string, storePath: string, opts: { cacheUrl?: string }, cmd: Command) => {
        const ctx = contextFor(cmd);
        const res = await ctx.client().setDesiredGeneration(
          {
            machineId: parseMachineId(id),
            storePath: parseStorePathArg(storePath, "store path"),
            cacheUrl: opts.cacheUrl ?? "",
          },
          ctx.call(),
        );
        if (ctx.output.json) return printJson(ctx.output, SetDesiredGenerationResponseSchema, res);
        const d = res.machine!.desiredGeneration;
        ctx.output.out(`${res.machine!.machineId} → ${d?.hash} (revision ${d?.revision})`);
        ctx.output.out(`follow it with: nixfleet status --watch`);
      }),
    );

  machines
    .command("clear-desired <id>")
    .description("remove a machine's desired generation; its agent goes idle")
    .action(
      runAction(async (id: string, _opts: unknown, cmd: Command) => {
        const ctx = contextFor(cmd);
        const res = await ctx.client().clearDesiredGeneration({ machineId: parseMachineId(id) }, ctx.call());
        if (ctx.output.json) return printJson(ctx.output, ClearDesiredGenerationResponseSchema, res);
        ctx.output.out(`${res.machine!.machineId} has no desired generation now`);
      }),
    );
}
