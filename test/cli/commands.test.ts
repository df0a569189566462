/**
 * The real `nixfleet` CLI (a subprocess) against the real control-plane process over TLS: every
 * command group's happy path, its --json output, its human output, and its failure paths with
 * their exit codes (0 ok, 1 failure, 2 usage).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  CreateReleaseResponseSchema,
  CreateRolloutResponseSchema,
  GetFleetStatusResponseSchema,
  GetRolloutResponseSchema,
  ListMachinesResponseSchema,
  RolloutStatus,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle } from "../../src/gen/nixfleet/v1/types_pb.js";
import { Fleet, waitFor } from "../fixtures/fleet.js";
import { TEST_NIX_CONFIG } from "../fixtures/nix.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

const P = (n: number, name = "nixos-system-x") =>
  `/nix/store/${String(n).padStart(2, "0")}c8vxs2ja1k5f5v0r4zm0h4y3hs7a0f-${name}`;

describe("nixfleet CLI against a real control plane", () => {
  const dir = makeTempDir("nixfleet-cli-it-");
  let fleet: Fleet;

  before(async () => {
    fleet = await Fleet.create({ dir, hosts: [] });
  });
  after(async () => {
    await fleet?.close();
    removeTempDir(dir);
  });

  it("registers, lists, shows and changes machines", async () => {
    const reg = await fleet.cli(
      ["machines", "register", "cli-web-01", "--tags", "web,prod", "--lifecycle", "active"],
      { human: true },
    );
    assert.equal(reg.code, 0, reg.stderr);
    assert.match(reg.stdout, /registered cli-web-01 \(active, tags: prod,web\)/);
    await fleet.cliOk(["machines", "register", "cli-web-02", "--tags", "web"]);
    await fleet.cliOk(["machines", "register", "cli-db-01", "--tags", "db,prod"]);

    const all = await fleet.cliAs(ListMachinesResponseSchema, ["machines", "list", "--tags", "prod"]);
    assert.deepEqual(
      all.machines.map((m) => m.machineId),
      ["cli-db-01", "cli-web-01"],
      "--tags matches machines having all tags",
    );
    const any = await fleet.cliAs(ListMachinesResponseSchema, [
      "machines",
      "list",
      "--tags",
      "web,db",
      "--match",
      "any",
    ]);
    assert.deepEqual(any.machines.map((m) => m.machineId).sort(), ["cli-db-01", "cli-web-01", "cli-web-02"]);
    const pending = await fleet.cliAs(ListMachinesResponseSchema, [
      "machines",
      "list",
      "--lifecycle",
      "pending",
    ]);
    assert.deepEqual(pending.machines.map((m) => m.machineId).sort(), ["cli-db-01", "cli-web-02"]);

    const table = await fleet.cli(["machines", "list", "--tags", "web"], { human: true });
    assert.match(table.stdout, /^ID\s+LIFECYCLE\s+STATE\s+CURRENT\s+TAGS/m);
    assert.match(table.stdout, /cli-web-01\s+active/);
    assert.match(table.stdout, /2 machines/);

    const lc = await fleet.cli(["machines", "set-lifecycle", "cli-web-02", "maintenance"], { human: true });
    assert.equal(lc.code, 1, "pending → maintenance is not a legal transition");
    assert.match(lc.stderr, /^error: refused: /m);
    await fleet.cliOk(["machines", "set-lifecycle", "cli-web-02", "active"]);
    const show = await fleet.cli(["machines", "show", "cli-web-02"], { human: true });
    assert.match(show.stdout, /lifecycle:\s+active/);

    const set = await fleet.cli(
      ["machines", "set-desired", "cli-db-01", P(1), "--cache-url", "https://cache.example"],
      { human: true },
    );
    assert.equal(set.code, 0, set.stderr);
    assert.match(set.stdout, new RegExp(`cli-db-01 → ${P(1)} \\(revision \\d+\\)`));
    const status = await fleet.cliAs(GetFleetStatusResponseSchema, ["status", "--tags", "db"]);
    assert.equal(status.machines[0]?.desiredGeneration, P(1));
    assert.equal(status.machines[0]?.inSync, false);
    await fleet.cliOk(["machines", "clear-desired", "cli-db-01"]);
    const cleared = await fleet.cliAs(GetFleetStatusResponseSchema, ["status", "--tags", "db"]);
    assert.equal(cleared.machines[0]?.desiredGeneration, "");
  });

  it("refuses bad input before sending anything, with exit code 2 naming the value", async () => {
    const cases: [string[], RegExp][] = [
      [
        ["machines", "set-desired", "cli-db-01", "/nix/store/short-x"],
        /store path "\/nix\/store\/short-x" must be/,
      ],
      [["machines", "set-desired", "cli-db-01", `${P(1)};reboot`], /shell metacharacters/],
      [["machines", "register", "bad id"], /machine id/],
      [["machines", "list", "--match", "some"], /--match must be all or any/],
      [
        ["machines", "set-lifecycle", "cli-db-01", "retired"],
        /state must be one of pending, active, maintenance, decommissioned/,
      ],
      [["release", "create"], /give exactly one of --entry/],
      [["release", "create", "--entry", "web-01"], /--entry must look like host=/],
      [["rollout", "start", "--release", "rel-x"], /give exactly one of --tags or --hosts/],
      [
        ["rollout", "start", "--release", "rel-x", "--tags", "web", "--batch-size", "0"],
        /--batch-size entry 1/,
      ],
      [
        ["rollout", "start", "--release", "rel-x", "--tags", "web", "--failure-threshold", "lots"],
        /--failure-threshold/,
      ],
      [
        ["rollout", "start", "--release", "rel-x", "--tags", "web", "--on-failure", "panic"],
        /--on-failure must be one of pause, revert/,
      ],
      [["rollout", "start", "--release", "rel-x", "--tags", "web", "--health-timeout", "0"], /at least 1s/],
      [["keys", "create", "--name", "x y", "--role", "admin"], /--name: key name/],
      [["nosuchcommand"], /unknown command/],
    ];
    for (const [args, why] of cases) {
      const r = await fleet.cli(args, { human: true });
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, why, args.join(" "));
      assert.ok(!r.stderr.includes("    at "), "no stack trace");
    }
  });

  it("creates releases from entries and manifests, diffs and deletes them", async () => {
    const a = await fleet.cliAs(CreateReleaseResponseSchema, [
      "release",
      "create",
      "--entry",
      `cli-web-01=${P(1)}`,
      "--entry",
      `cli-web-02=${P(2)}`,
      "--cache-url",
      "https://cache.example",
    ]);
    assert.equal(a.release?.hostCount, 2);
    const manifest = join(dir, "manifest.json");
    writeFileSync(
      manifest,
      JSON.stringify({
        entries: [
          { hostname: "cli-web-01", storePath: P(3), platform: "x86_64-linux" },
          { hostname: "cli-db-01", store_path: P(4) },
        ],
        flakeRef: "github:example/fleet",
        flakeRev: "abc123",
      }),
    );
    const b = await fleet.cliAs(CreateReleaseResponseSchema, ["release", "create", "--manifest", manifest]);
    assert.equal(b.release?.flakeRef, "github:example/fleet");
    const plain = join(dir, "plain.json");
    writeFileSync(plain, JSON.stringify({ "cli-web-02": P(5) }));
    const c = await fleet.cliAs(CreateReleaseResponseSchema, ["release", "create", "--manifest", plain]);
    assert.equal(c.release?.entries[0]?.storePath, P(5));

    const diff = await fleet.cli(["release", "diff", a.release!.id, b.release!.id], { human: true });
    assert.equal(diff.code, 0, diff.stderr);
    assert.match(diff.stdout, /changed\s+cli-web-01/);
    assert.match(diff.stdout, /added\s+cli-db-01/);
    assert.match(diff.stdout, /removed\s+cli-web-02/);
    assert.match(diff.stdout, /1 changed, 1 added, 1 removed, 0 unchanged/);

    const bad = join(dir, "bad.json");
    writeFileSync(bad, JSON.stringify({ entries: [{ hostname: "cli-web-01", storePath: "/etc/passwd" }] }));
    const refused = await fleet.cli(["release", "create", "--manifest", bad], { human: true });
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /entries\[0\]\.storePath/);

    const del = await fleet.cli(["release", "delete", c.release!.id], { human: true });
    assert.equal(del.code, 0, del.stderr);
    const gone = await fleet.cli(["release", "show", c.release!.id], { human: true });
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /^error: not found: /m);
  });

  it("starts, inspects, pauses, resumes and cancels rollouts, and --wait gives up at --wait-timeout", async () => {
    await fleet.cliOk(["machines", "register", "cli-canary-01", "--tags", "canary", "--lifecycle", "active"]);
    await fleet.cliOk(["machines", "register", "cli-canary-02", "--tags", "canary", "--lifecycle", "active"]);
    const rel = await fleet.cliAs(CreateReleaseResponseSchema, [
      "release",
      "create",
      "--entry",
      `cli-canary-01=${P(6)}`,
      "--entry",
      `cli-canary-02=${P(7)}`,
    ]);
    const none = await fleet.cli(["rollout", "start", "--release", rel.release!.id, "--tags", "nosuchtag"], {
      human: true,
    });
    assert.equal(none.code, 1);
    assert.match(none.stderr, /no active machines match/);

    const started = await fleet.cliAs(CreateRolloutResponseSchema, [
      "rollout",
      "start",
      "--release",
      rel.release!.id,
      "--tags",
      "canary",
      "--strategy",
      "canary",
      "--health-timeout",
      "10m",
    ]);
    const id = started.rollout!.id;
    assert.equal(started.rollout!.batches.length, 2);
    assert.equal(started.rollout!.healthTimeoutSeconds, 600);

    const busy = await fleet.cli(["machines", "set-desired", "cli-canary-01", P(8)], { human: true });
    assert.equal(busy.code, 1, "a machine in an active rollout takes no one-off deploys");
    assert.match(busy.stderr, /refused: .*rollout/);

    // No agent runs: the rollout waits on its canary, so --wait must give up at its timeout.
    // 20 s, not 2: on a loaded machine the first status can take seconds to arrive, and the CLI
    // then gives up with "still unknown" rather than "still running".
    const waited = await fleet.cli(["rollout", "status", id, "--wait", "--wait-timeout", "20s"], {
      human: true,
    });
    assert.equal(waited.code, 1);
    assert.match(waited.stderr, new RegExp(`rollout ${id} is still running after waiting 20s`));
    assert.match(
      waited.stderr,
      new RegExp(`hint: keep following it with: nixfleet rollout status ${id} --wait`),
    );

    const human = await fleet.cli(["rollout", "status", id], { human: true });
    assert.match(human.stdout, /batch 1\/2 {2}deploying/);
    assert.match(human.stdout, /cli-canary-0[12]\s+pending: waiting for the switch/);

    await fleet.cliOk(["rollout", "pause", id, "--reason", "change freeze"]);
    const paused = await fleet.cliAs(GetRolloutResponseSchema, ["rollout", "status", id]);
    assert.equal(paused.rollout?.status, RolloutStatus.PAUSED);
    const waitPaused = await fleet.cli(["rollout", "status", id, "--wait"], { human: true });
    assert.equal(waitPaused.code, 1, "waiting on a paused rollout ends at once, non-zero");
    assert.match(waitPaused.stderr, /is PAUSED at batch 1\/2/);
    assert.match(waitPaused.stderr, new RegExp(`nixfleet rollout resume ${id} --wait`));

    const again = await fleet.cli(["rollout", "pause", id], { human: true });
    assert.equal(again.code, 1);
    await fleet.cliOk(["rollout", "resume", id]);
    const cancel = await fleet.cli(["rollout", "cancel", id, "--revert"], { human: true });
    assert.equal(cancel.code, 0, cancel.stderr);
    assert.match(cancel.stdout, /cancelled .*previous generations back/);
    const ended = await fleet.cliAs(GetRolloutResponseSchema, ["rollout", "status", id]);
    assert.equal(ended.rollout?.status, RolloutStatus.CANCELLED);
    const list = await fleet.cli(["rollout", "list", "--status", "cancelled"], { human: true });
    assert.match(list.stdout, new RegExp(`${id}\\s+cancelled\\s+canary`));
  });

  it("manages API keys and turns auth failures into actionable messages", async () => {
    const created = await fleet.cli(["keys", "create", "--name", "cli-reader", "--role", "readonly"], {
      human: true,
    });
    assert.equal(created.code, 0, created.stderr);
    const secret = created.stdout.trim();
    assert.match(secret, /^nfk-[0-9a-f]{64}$/, "the secret alone on stdout");
    assert.match(created.stderr, /store the secret now/);

    const read = await fleet.cli(["machines", "list"], { key: secret });
    assert.equal(read.code, 0, read.stderr);
    const denied = await fleet.cli(["machines", "register", "cli-x-01"], { key: secret, human: true });
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /^error: permission denied: /m);
    assert.match(denied.stderr, /^hint: use an API key with a role/m);

    const list = await fleet.cli(["keys", "list"], { human: true });
    assert.match(list.stdout, /cli-reader\s+readonly/);
    await fleet.cliOk(["keys", "revoke", "cli-reader"]);
    const revoked = await fleet.cli(["status"], { key: secret, human: true });
    assert.equal(revoked.code, 1);
    assert.match(revoked.stderr, /did not accept the API key/);
    assert.match(revoked.stderr, /nixfleet-control-plane keys create/);

    const unknown = await fleet.cli(["status"], { key: `nfk-${"0".repeat(64)}`, human: true });
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /did not accept the API key/);
  });

  it("config shows each setting and where it came from", async () => {
    const r = await fleet.cli(["config"], { human: true, env: { NIXFLEET_PROTOCOL: "connect" } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /controlPlaneUrl:\s+https:\/\/127\.0\.0\.1:\d+\s+\(flag\)/);
    assert.match(r.stdout, /apiKey:\s+nfk-\w{4}… \(hidden\)\s+\(flag\)/, "the key is never printed whole");
    assert.match(r.stdout, /protocol:\s+connect\s+\(NIXFLEET_PROTOCOL\)/);
    assert.match(r.stdout, /timeout:\s+30s\s+\(default\)/);
    assert.ok(!r.stdout.includes(fleet.adminKey));
  });

  it("rollout watch follows a rollout like status --wait, and status --watch redraws on a change", async () => {
    const list = await fleet.cli(["rollout", "list", "--status", "cancelled"]);
    const id = (list.json as { rollouts: { id: string }[] }).rollouts[0]!.id;
    const watched = await fleet.cli(["rollout", "watch", id], { human: true });
    assert.equal(watched.code, 1, "a cancelled rollout is not a success");
    assert.match(watched.stderr, new RegExp(`rollout ${id} was cancelled`));

    const proc = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        join(import.meta.dirname, "../../src/cli/main.ts"),
        "-u",
        fleet.cp.url,
        "--ca-cert",
        fleet.pki.ca,
        "-k",
        fleet.adminKey,
        "status",
        "--watch",
        "--interval",
        "1s",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    proc.stdout.on("data", (c: Buffer) => {
      out += c.toString();
    });
    try {
      await waitFor("the first table", () => /hosts in sync/.test(out), 30_000);
      // It follows WatchFleet: a newly registered machine is the next table's news.
      await fleet.cliOk(["machines", "register", "cli-watch-01"]);
      await waitFor("a table with the new machine", () => /^cli-watch-01\s/m.test(out), 30_000);
    } finally {
      proc.kill("SIGINT");
    }
    assert.match(out, /^HOST\s+STATE/m);
  });

  it("shows the audit log of what it did", async () => {
    const r = await fleet.cli(["audit", "--action", "machine.register", "--limit", "2"], { human: true });
    assert.equal(r.code, 0, r.stderr);
    const rows = r.stdout.trim().split("\n").slice(1);
    assert.equal(rows.length, 2);
    for (const row of rows) assert.match(row, /apikey:admin\s+machine\.register/);
  });

  it("reports an unreachable control plane as exit 1 with what to check", async () => {
    const r = await fleet.cli(["status"], { human: true, env: {} });
    assert.equal(r.code, 0);
    const down = await fleet.cli(["--control-plane-url", "https://127.0.0.1:1", "status"], { human: true });
    assert.equal(down.code, 1);
    assert.match(down.stderr, /cannot reach the control plane at https:\/\/127\.0\.0\.1:1/);
    assert.match(down.stderr, /hint: check that it is running/);
    // The system CAs do not know the test CA: a TLS error, explained (the later --ca-cert wins).
    const untrusted = await fleet.cli(["--ca-cert", "/etc/ssl/certs/ca-certificates.crt", "status"], {
      human: true,
    });
    assert.equal(untrusted.code, 1);
    assert.match(untrusted.stderr, /TLS: the control plane's certificate is not trusted/);
    assert.match(untrusted.stderr, /hint: pass --ca-cert/);
  });

  it("status --json reports every host and the lifecycle we set", async () => {
    const s = await fleet.cliAs(GetFleetStatusResponseSchema, ["status"]);
    const web = s.machines.find((m) => m.machineId === "cli-web-01");
    assert.equal(web?.lifecycle, MachineLifecycle.ACTIVE);
    assert.equal(s.total, s.machines.length);
    const human = await fleet.cli(["status"], { human: true });
    assert.match(
      human.stdout,
      /^HOST\s+STATE\s+LIFECYCLE\s+SYNC\s+CURRENT\s+DESIRED\s+HEALTH\s+LAST SEEN\s+ROLLOUT/m,
    );
    assert.match(human.stdout, /\d+\/\d+ hosts in sync/);
  });

  it("builds a release from a flake and pushes it to a cache", async () => {
    const flakeDir = join(dir, "flake");
    mkdirSync(flakeDir, { recursive: true });
    const system = `${process.arch === "arm64" ? "aarch64" : "x86_64"}-linux`;
    writeFileSync(
      join(flakeDir, "flake.nix"),
      `{ outputs = { self }: let mk = n: { pkgs.system = "${system}"; config.system.build.toplevel = builtins.derivation {
           name = "nixos-system-\${n}"; system = "${system}"; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
           args = [ "-c" "mkdir -p $out/bin; echo \${n} ${process.pid}-${Date.now()} > $out/name" ]; }; };
         in { nixosConfigurations = { flake-web-01 = mk "flake-web-01"; flake-web-02 = mk "flake-web-02"; flake-db-01 = mk "flake-db-01"; }; }; }`,
    );
    const cache = `file://${join(dir, "flake-cache")}`;
    const r = await fleet.cli(
      ["release", "create", "--flake", `path:${flakeDir}`, "--hosts", "flake-web-*", "--push-to", cache],
      { env: { NIX_CONFIG: `${TEST_NIX_CONFIG} flakes` } },
    );
    assert.equal(r.code, 0, r.stderr);
    const rel = (
      r.json as {
        release: { entries: { hostname: string; storePath: string }[]; cacheUrl: string; flakeRef: string };
      }
    ).release;
    assert.deepEqual(
      rel.entries.map((e) => e.hostname),
      ["flake-web-01", "flake-web-02"],
    );
    for (const e of rel.entries)
      assert.match(e.storePath, new RegExp(`^/nix/store/[0-9a-z]{32}-nixos-system-${e.hostname}$`));
    assert.equal(rel.cacheUrl, cache, "the push target becomes the release's cache");
    assert.equal(rel.flakeRef, `path:${flakeDir}`);
    const noMatch = await fleet.cli(
      ["release", "create", "--flake", `path:${flakeDir}`, "--hosts", "mail-*"],
      {
        human: true,
        env: { NIX_CONFIG: `${TEST_NIX_CONFIG} flakes` },
      },
    );
    assert.equal(noMatch.code, 2);
    assert.match(noMatch.stderr, /--hosts mail-\* matches none of .*flake-db-01, flake-web-01, flake-web-02/);
  });
});
