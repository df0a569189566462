/** `nixfleet release …`: immutable host → store path manifests. */
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import {
  CreateReleaseResponseSchema,
  DiffReleasesResponseSchema,
  GetReleaseResponseSchema,
  ListReleasesResponseSchema,
  type Release,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import { contextFor } from "../context.js";
import { UsageError } from "../errors.js";
import { buildHost, flakeHosts, flakeRevision, pushToCache, runNix } from "../nix.js";
import { ago, isoTime, printJson, shortPath, table } from "../output.js";
import { hostMatcher, parseEntry, parseMachineId, parsePositiveInt, parseStorePathArg } from "../parse.js";
import { runAction } from "../run.js";

interface EntryInit {
  hostname: string;
  storePath: string;
  platform: string;
  tags: string[];
}

/**
 * Reads a manifest file: either {"entries": [{hostname, storePath|store_path, platform?, tags?}],
 * "cacheUrl"?, "flakeRef"?, "flakeRev"?} or a plain {"host": "/nix/store/…"} map.
 */
export function readManifest(path: string): {
  entries: EntryInit[];
  cacheUrl?: string;
  flakeRef?: string;
  flakeRev?: string;
} {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new UsageError(`--manifest ${path}: ${(err as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new UsageError(`--manifest ${path}: must be a JSON object`);
  const obj = raw as Record<string, unknown>;
  const str = (v: unknown, what: string): string => {
    if (typeof v !== "string") throw new UsageError(`--manifest ${path}: ${what} must be a string`);
    return v;
  };
  if (!("entries" in obj)) {
    return {
      entries: Object.entries(obj).map(([host, p]) => ({
        hostname: parseMachineId(host, `--manifest ${path}: host`),
        storePath: parseStorePathArg(str(p, host), `--manifest ${path}: ${host}`),
        platform: "",
        tags: [],
      })),
    };
  }
  if (!Array.isArray(obj["entries"])) throw new UsageError(`--manifest ${path}: "entries" must be a list`);
  const entries = (obj["entries"] as unknown[]).map((e, i) => {
    if (typeof e !== "object" || e === null)
      throw new UsageError(`--manifest ${path}: entries[${i}] must be an object`);
    const r = e as Record<string, unknown>;
    const hostname = parseMachineId(
      str(r["hostname"], `entries[${i}].hostname`),
      `--manifest ${path}: entries[${i}].hostname`,
    );
    const storePath = str(r["storePath"] ?? r["store_path"], `entries[${i}].storePath`);
    return {
      hostname,
      storePath: parseStorePathArg(storePath, `--manifest ${path}: entries[${i}].storePath`),
      platform: r["platform"] === undefined ? "" : str(r["platform"], `entries[${i}].platform`),
      tags: Array.isArray(r["tags"])
        ? (r["tags"] as unknown[]).map((t, j) => str(t, `entries[${i}].tags[${j}]`))
        : [],
    };
  });
  const opt = (k: string) => (obj[k] === undefined ? undefined : str(obj[k], k));
  return {
    entries,
    ...(opt("cacheUrl") !== undefined ? { cacheUrl: opt("cacheUrl")! } : {}),
    ...(opt("flakeRef") !== undefined ? { flakeRef: opt("flakeRef")! } : {}),
    ...(opt("flakeRev") !== undefined ? { flakeRev: opt("flakeRev")! } : {}),
  };
}

function releaseDetail(r: Release): string {
  const head = [
    `release:   ${r.id}`,
    `created:   ${isoTime(r.createdAt)} by ${r.createdBy || "-"}`,
    `hosts:     ${r.hostCount}`,
    `cache:     ${r.cacheUrl || "-"}`,
    `flake:     ${r.flakeRef || "-"}${r.flakeRev ? ` @ ${r.flakeRev}` : ""}`,
  ].join("\n");
  const rows = r.entries.map((e) => [e.hostname, e.platform || "-", e.storePath]);
  return `${head}\n\n${table(["HOST", "PLATFORM", "STORE PATH"], rows)}`;
}

/**
 * The URL agents should fetch from, given the one closures were pushed to: upload-only
 * parameters (the signing key!) must not end up in the release.
 */
export function readableCacheUrl(pushTo: string): string {
  const q = pushTo.indexOf("?");
  if (q < 0) return pushTo;
  const params = new URLSearchParams(pushTo.slice(q + 1));
  for (const writeOnly of [
    "secret-key",
    "write-nar-listing",
    "parallel-compression",
    "compression",
    "compression-level",
  ])
    params.delete(writeOnly);
  const rest = params.toString();
  return rest ? `${pushTo.slice(0, q)}?${rest}` : pushTo.slice(0, q);
}

interface CreateOpts {
  entry?: string[];
  manifest?: string;
  cacheUrl?: string;
  flakeRef?: string;
  flakeRev?: string;
  flake?: string;
  hosts?: string;
  pushTo?: string;
}

export function registerReleases(program: Command): void {
  const release = program
    .command("release")
    .description("create and inspect releases (host → store path manifests)");

  release
    .command("create")
    .description("register a release from --entry pairs, a --manifest file, or by building --flake hosts")
    // No commander defaults here: the help prints a default once, from the description, not
    // again as `(default: [])` or `(default: "*")`.
    .option(
      "--entry <host=/nix/store/…>",
      "one host's system closure (repeatable)",
      (v: string, acc?: string[]) => [...(acc ?? []), v],
    )
    .option(
      "--manifest <file>",
      "JSON manifest: {entries:[{hostname, storePath, platform?, tags?}], cacheUrl?, flakeRef?, flakeRev?} or {host: path}",
    )
    .option("--flake <ref>", "build nixosConfigurations.<host>.config.system.build.toplevel for --hosts")
    .option("--hosts <globs>", "with --flake: host names or globs, comma-separated (default: all)")
    .option(
      "--push-to <cache>",
      "nix copy the closures to this cache before registering (e.g. s3://…, file:///…)",
    )
    .option("--cache-url <url>", "cache agents fetch from (default: --push-to, or the agents' own cacheUrl)")
    .option("--flake-ref <ref>", "recorded flake reference (default: --flake's URL)")
    .option("--flake-rev <rev>", "recorded flake revision (default: --flake's git revision)")
    .action(
      runAction(async (opts: CreateOpts, cmd: Command) => {
        const ctx = contextFor(cmd);
        const given = opts.entry ?? [];
        const sources = [given.length > 0, Boolean(opts.manifest), Boolean(opts.flake)].filter(
          Boolean,
        ).length;
        if (sources !== 1)
          throw new UsageError("give exactly one of --entry (repeatable), --manifest or --flake");
        let entries: EntryInit[] = [];
        let cacheUrl = opts.cacheUrl;
        let flakeRef = opts.flakeRef;
        let flakeRev = opts.flakeRev;
        if (given.length > 0) {
          entries = given.map((e) => ({ ...parseEntry(e), platform: "", tags: [] }));
        } else if (opts.manifest) {
          const m = readManifest(opts.manifest);
          entries = m.entries;
          cacheUrl ??= m.cacheUrl;
          flakeRef ??= m.flakeRef;
          flakeRev ??= m.flakeRev;
        } else if (opts.flake) {
          const match = hostMatcher(opts.hosts ?? "*");
          const all = await flakeHosts(runNix, opts.flake);
          const chosen = all.filter(match);
          if (chosen.length === 0) {
            throw new UsageError(
              `--hosts ${opts.hosts} matches none of ${opts.flake}'s hosts (${all.join(", ") || "none"})`,
            );
          }
          for (const host of chosen) {
            if (!ctx.output.json) ctx.output.err(`building ${host}…`);
            const built = await buildHost(runNix, opts.flake, host);
            entries.push({ ...built, tags: [] });
          }
          const meta = await flakeRevision(runNix, opts.flake).catch(() => ({
            url: opts.flake!,
            revision: "",
          }));
          flakeRef ??= meta.url;
          flakeRev ??= meta.revision;
        }
        const seen = new Set<string>();
        for (const e of entries) {
          if (seen.has(e.hostname)) throw new UsageError(`host ${e.hostname} appears twice in the release`);
          seen.add(e.hostname);
        }
        if (opts.pushTo) {
          if (!ctx.output.json) ctx.output.err(`pushing ${entries.length} closure(s) to ${opts.pushTo}…`);
          await pushToCache(
            runNix,
            opts.pushTo,
            entries.map((e) => e.storePath),
          );
          cacheUrl ??= readableCacheUrl(opts.pushTo);
        }
        const res = await ctx
          .client()
          .createRelease(
            { entries, cacheUrl: cacheUrl ?? "", flakeRef: flakeRef ?? "", flakeRev: flakeRev ?? "" },
            ctx.call(),
          );
        if (ctx.output.json) return printJson(ctx.output, CreateReleaseResponseSchema, res);
        ctx.output.out(releaseDetail(res.release!));
        ctx.output.out(
          `\nroll it out with: nixfleet rollout start --release ${res.release!.id} --tags <tags> --wait`,
        );
      }),
    );

  release
    .command("list")
    .description("releases, newest first")
    .option("--host <id>", "only releases with an entry for this host")
    .option("--limit <n>", "how many", "20")
    .action(
      runAction(async (opts: { host?: string; limit: string }, cmd: Command) => {
        const ctx = contextFor(cmd);
        const pageSize = parsePositiveInt(opts.limit, "--limit", 500);
        const res = await ctx
          .client()
          .listReleases({ host: opts.host ? parseMachineId(opts.host, "--host") : "", pageSize }, ctx.call());
        if (ctx.output.json) return printJson(ctx.output, ListReleasesResponseSchema, res);
        if (res.releases.length === 0) return ctx.output.out("no releases");
        ctx.output.out(
          table(
            ["ID", "HOSTS", "CREATED", "BY", "FLAKE"],
            res.releases.map((r) => [
              r.id,
              String(r.hostCount),
              ago(r.createdAt),
              r.createdBy || "-",
              `${r.flakeRef || "-"}${r.flakeRev ? `@${r.flakeRev.slice(0, 12)}` : ""}`,
            ]),
          ),
        );
      }),
    );

  release
    .command("show <id>")
    .description("a release's entries")
    .action(
      runAction(async (id: string, _opts: unknown, cmd: Command) => {
        const ctx = contextFor(cmd);
        const res = await ctx.client().getRelease({ releaseId: id }, ctx.call());
        if (ctx.output.json) return printJson(ctx.output, GetReleaseResponseSchema, res);
        ctx.output.out(releaseDetail(res.release!));
      }),
    );

  release
    .command("diff <from> <to>")
    .description("what changes per host going from one release to another")
    .action(
      runAction(async (from: string, to: string, _opts: unknown, cmd: Command) => {
        const ctx = contextFor(cmd);
        const res = await ctx.client().diffReleases({ fromReleaseId: from, toReleaseId: to }, ctx.call());
        if (ctx.output.json) return printJson(ctx.output, DiffReleasesResponseSchema, res);
        const rows = [
          ...res.changed.map((c) => [
            "changed",
            c.hostname,
            `${shortPath(c.fromStorePath)} → ${shortPath(c.toStorePath)}`,
          ]),
          ...res.added.map((e) => ["added", e.hostname, shortPath(e.storePath)]),
          ...res.removed.map((e) => ["removed", e.hostname, shortPath(e.storePath)]),
          ...res.unchanged.map((h) => ["unchanged", h, ""]),
        ];
        ctx.output.out(
          rows.length ? table(["CHANGE", "HOST", "STORE PATH"], rows) : "both releases are empty",
        );
        ctx.output.out(
          `\n${res.changed.length} changed, ${res.added.length} added, ${res.removed.length} removed, ${res.unchanged.length} unchanged`,
        );
      }),
    );

  release
    .command("delete <id>")
    .description("delete a release no rollout references")
    .action(
      runAction(async (id: string, _opts: unknown, cmd: Command) => {
        const ctx = contextFor(cmd);
        await ctx.client().deleteRelease({ releaseId: id }, ctx.call());
        if (ctx.output.json) return ctx.output.out("{}");
        ctx.output.out(`deleted ${id}`);
      }),
    );
}
