import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { hashSecret } from "../../src/control-plane/auth/api-keys.js";
import { FLEET_METHOD_ROLES } from "../../src/control-plane/auth/roles.js";
import {
  ApiKeyRole,
  FleetService,
  ListApiKeysResponseSchema,
  OnFailure,
  RolloutStatus,
  RolloutStrategy,
  TagMatch,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle, Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness } from "./harness.js";
import { storePath } from "./helpers.js";

async function rejects(p: Promise<unknown>, expected: Code, message?: RegExp): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    const e = ConnectError.from(err);
    assert.equal(Code[e.code], Code[expected], e.rawMessage);
    if (message) assert.match(e.rawMessage, message);
    return e;
  }
  assert.fail(`expected ${Code[expected]}, the call succeeded`);
}

describe("FleetService", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  before(async () => {
    pki = createPki(join(dir, "pki"));
    h = await Harness.start(pki);
  });
  after(async () => {
    await h.close();
    removeTempDir(dir);
  });

  const report = (id: string, tags: string[], current = storePath(`sys-${id}`, 1)) =>
    h.agent(id).report({ machineId: id, currentGeneration: current, outcome: Outcome.UP_TO_DATE, tags });

  async function release(hosts: string[], n = 2, cacheUrl = "https://cache.example.org") {
    const { release } = await h.fleet("deploy").createRelease({
      entries: hosts.map((hostname) => ({
        hostname,
        storePath: storePath(`sys-${hostname}`, n),
        platform: "x86_64-linux",
      })),
      cacheUrl,
      flakeRef: "github:example/fleet",
      flakeRev: "abc123",
    });
    return release!;
  }

  describe("authentication and roles", () => {
    /** Calls any FleetService method with an empty request (unary or server stream). */
    async function call(client: ReturnType<Harness["fleet"]>, name: string): Promise<void> {
      const method = FleetService.methods.find((m) => m.name === name)!;
      const fn = (client as unknown as Record<string, (req: object) => unknown>)[method.localName]!;
      if (method.methodKind === "server_streaming") {
        for await (const _ of fn.call(client, {}) as AsyncIterable<unknown>) break;
      } else {
        await fn.call(client, {});
      }
    }
    const below = { readonly: null, deploy: "readonly", admin: "deploy" } as const;

    for (const method of FleetService.methods) {
      const needed = FLEET_METHOD_ROLES[method.name]!;
      it(`${method.name}: no key and a bad key → UNAUTHENTICATED; ${below[needed] ?? "(none)"} → PERMISSION_DENIED; ${needed} passes auth`, async () => {
        await rejects(call(h.fleet(null), method.name), Code.Unauthenticated, /missing API key/);
        await rejects(
          call(h.fleet(`nfk-${"0".repeat(64)}`), method.name),
          Code.Unauthenticated,
          /unknown or revoked/,
        );
        await rejects(call(h.fleet("not-a-key"), method.name), Code.Unauthenticated, /malformed/);
        const lower = below[needed];
        if (lower)
          await rejects(
            call(h.fleet(lower), method.name),
            Code.PermissionDenied,
            new RegExp(`${method.name} needs ${needed}`),
          );
        try {
          await call(h.fleet(needed), method.name);
        } catch (err) {
          const c = ConnectError.from(err).code;
          assert.ok(
            c !== Code.Unauthenticated && c !== Code.PermissionDenied,
            `${method.name} with ${needed}: ${Code[c]}`,
          );
        }
      });
    }

    it("a revoked key is refused at once; a key cannot revoke itself", async () => {
      const created = await h.fleet("admin").createApiKey({ name: "temp-admin", role: ApiKeyRole.ADMIN });
      assert.match(created.secret, /^nfk-[0-9a-f]{64}$/);
      const temp = h.fleet(created.secret);
      await temp.listApiKeys({});
      await rejects(
        temp.revokeApiKey({ key: "temp-admin" }),
        Code.FailedPrecondition,
        /cannot revoke itself/,
      );
      const revoked = await h.fleet("admin").revokeApiKey({ key: created.apiKey!.id });
      assert.ok(revoked.apiKey?.revokedAt);
      await rejects(temp.listApiKeys({}), Code.Unauthenticated, /unknown or revoked/);
      await rejects(
        h.fleet("admin").revokeApiKey({ key: created.apiKey!.id }),
        Code.FailedPrecondition,
        /already revoked/,
      );
      await rejects(h.fleet("admin").revokeApiKey({ key: "no-such-key" }), Code.NotFound);
      await rejects(h.fleet("admin").revokeApiKey({ key: "" }), Code.InvalidArgument, /^key:/);
    });

    it("API keys: created with a role, listed without secrets, names unique among live keys", async () => {
      const ci = await h.fleet("admin").createApiKey({ name: "ci", role: ApiKeyRole.DEPLOY });
      await h.fleet(ci.secret).createRelease({ entries: [{ hostname: "k-01", storePath: storePath("k") }] });
      await rejects(
        h.fleet(ci.secret).createApiKey({ name: "x", role: ApiKeyRole.READONLY }),
        Code.PermissionDenied,
      );
      await rejects(
        h.fleet("admin").createApiKey({ name: "ci", role: ApiKeyRole.ADMIN }),
        Code.AlreadyExists,
      );
      await rejects(
        h.fleet("admin").createApiKey({ name: "bad name", role: ApiKeyRole.ADMIN }),
        Code.InvalidArgument,
        /^name:/,
      );
      await rejects(h.fleet("admin").createApiKey({ name: "norole" }), Code.InvalidArgument, /^role:/);
      const listed = await h.fleet("admin").listApiKeys({});
      const entry = listed.apiKeys.find((k) => k.name === "ci");
      assert.equal(entry?.role, ApiKeyRole.DEPLOY);
      assert.ok(entry?.lastUsedAt, "last use recorded");
      const rendered = toJsonString(ListApiKeysResponseSchema, listed);
      assert.ok(
        !rendered.includes(ci.secret.slice(4)) && !rendered.includes(hashSecret(ci.secret)),
        "no secret or hash",
      );
      assert.ok(!listed.apiKeys.some((k) => k.revokedAt), "revoked keys hidden by default");
      assert.ok(
        (await h.fleet("admin").listApiKeys({ includeRevoked: true })).apiKeys.some((k) => k.revokedAt),
      );
    });
  });

  describe("machines", () => {
    it("RegisterMachine pre-registers (PENDING) or updates tags; refuses DECOMMISSIONED and bad ids", async () => {
      const admin = h.fleet("admin");
      const first = await admin.registerMachine({ machineId: "reg-01", tags: ["web", "eu"] });
      assert.equal(first.created, true);
      assert.equal(first.machine?.lifecycle, MachineLifecycle.PENDING);
      const second = await admin.registerMachine({ machineId: "reg-01", tags: ["db"] });
      assert.equal(second.created, false);
      assert.deepEqual(second.machine?.tags, ["db"]);
      assert.equal(
        (await admin.registerMachine({ machineId: "reg-02", lifecycle: MachineLifecycle.ACTIVE })).machine
          ?.lifecycle,
        MachineLifecycle.ACTIVE,
      );
      await rejects(
        admin.registerMachine({ machineId: "reg-03", lifecycle: MachineLifecycle.DECOMMISSIONED }),
        Code.InvalidArgument,
        /^lifecycle:/,
      );
      await rejects(admin.registerMachine({ machineId: "reg 03" }), Code.InvalidArgument, /^machine_id:/);
      await rejects(
        admin.registerMachine({ machineId: "reg-03", tags: ["a", ""] }),
        Code.InvalidArgument,
        /^tags\[1\]:/,
      );
      // An existing machine moves only along legal transitions.
      await rejects(
        admin.registerMachine({ machineId: "reg-01", lifecycle: MachineLifecycle.MAINTENANCE }),
        Code.FailedPrecondition,
      );
      await rejects(h.fleet("readonly").getMachine({ machineId: "reg-03" }), Code.NotFound);
    });

    it("ListMachines filters by ALL/ANY tags and lifecycle, pages with tokens", async () => {
      await report("lm-a", ["lm", "x"]);
      await report("lm-b", ["lm", "y"]);
      await report("lm-c", ["lm", "x", "y"]);
      const ro = h.fleet("readonly");
      const ids = async (req: Parameters<typeof ro.listMachines>[0]) =>
        (await ro.listMachines(req)).machines.map((m) => m.machineId);
      assert.deepEqual(await ids({ tags: ["lm", "x"] }), ["lm-a", "lm-c"]);
      assert.deepEqual(await ids({ tags: ["x", "y"], match: TagMatch.ANY }), ["lm-a", "lm-b", "lm-c"]);
      assert.deepEqual(await ids({ tags: ["x", "y"], match: TagMatch.ALL }), ["lm-c"]);
      const page1 = await ro.listMachines({ tags: ["lm"], pageSize: 2 });
      assert.deepEqual(
        page1.machines.map((m) => m.machineId),
        ["lm-a", "lm-b"],
      );
      const page2 = await ro.listMachines({ tags: ["lm"], pageSize: 2, pageToken: page1.nextPageToken });
      assert.deepEqual([page2.machines.map((m) => m.machineId), page2.nextPageToken], [["lm-c"], ""]);
      await h
        .fleet("admin")
        .setMachineLifecycle({ machineId: "lm-b", lifecycle: MachineLifecycle.MAINTENANCE });
      assert.deepEqual(await ids({ tags: ["lm"], lifecycle: MachineLifecycle.MAINTENANCE }), ["lm-b"]);
      await rejects(ro.listMachines({ pageToken: "garbage!" }), Code.InvalidArgument, /^page_token:/);
      await rejects(ro.listMachines({ match: 9 as TagMatch }), Code.InvalidArgument, /^match:/);
      await rejects(
        ro.listMachines({ lifecycle: 9 as MachineLifecycle }),
        Code.InvalidArgument,
        /^lifecycle:/,
      );
    });

    it("SetMachineLifecycle enforces the transition rules", async () => {
      await report("lc-01", []);
      const admin = h.fleet("admin");
      const m = await admin.setMachineLifecycle({
        machineId: "lc-01",
        lifecycle: MachineLifecycle.MAINTENANCE,
      });
      assert.equal(m.machine?.lifecycle, MachineLifecycle.MAINTENANCE);
      await admin.setMachineLifecycle({ machineId: "lc-01", lifecycle: MachineLifecycle.DECOMMISSIONED });
      await rejects(
        admin.setMachineLifecycle({ machineId: "lc-01", lifecycle: MachineLifecycle.ACTIVE }),
        Code.FailedPrecondition,
        /terminal/,
      );
      await rejects(admin.setMachineLifecycle({ machineId: "lc-01" }), Code.InvalidArgument, /^lifecycle:/);
      await rejects(
        admin.setMachineLifecycle({ machineId: "nope-01", lifecycle: MachineLifecycle.ACTIVE }),
        Code.NotFound,
      );
    });

    it("Set/ClearDesiredGeneration validate, need a registered machine, and are audited", async () => {
      await report("sd-01", []);
      const deploy = h.fleet("deploy");
      const p = storePath("sys-sd-01", 5);
      const set = await deploy.setDesiredGeneration({
        machineId: "sd-01",
        storePath: p,
        cacheUrl: "https://c.example.org",
      });
      assert.equal(set.machine?.desiredGeneration?.hash, p);
      await rejects(
        deploy.setDesiredGeneration({ machineId: "sd-01", storePath: "/nix/store/abc" }),
        Code.InvalidArgument,
        /^store_path:/,
      );
      await rejects(
        deploy.setDesiredGeneration({ machineId: "sd-01", storePath: p, cacheUrl: "nope" }),
        Code.InvalidArgument,
        /^cache_url:/,
      );
      await rejects(
        deploy.setDesiredGeneration({ machineId: "ghost-01", storePath: p }),
        Code.NotFound,
        /not registered/,
      );
      const cleared = await deploy.clearDesiredGeneration({ machineId: "sd-01" });
      assert.equal(cleared.machine?.desiredGeneration, undefined);
      await deploy.clearDesiredGeneration({ machineId: "sd-01" });
      await rejects(deploy.clearDesiredGeneration({ machineId: "ghost-01" }), Code.NotFound);
      const audit = await h.fleet("readonly").listAuditEvents({ target: "sd-01" });
      assert.deepEqual(
        audit.events.map((e) => e.action),
        ["desired.clear", "desired.set", "machine.register"],
      );
      assert.match(audit.events[1]!.actor, /^apikey:test-deploy-/);
    });
  });

  describe("releases", () => {
    it("CreateRelease validates every entry and stores nothing on error", async () => {
      const deploy = h.fleet("deploy");
      const before = (await h.fleet("readonly").listReleases({ pageSize: 500 })).releases.length;
      const good = { hostname: "r-01", storePath: storePath("r-01") };
      await rejects(
        deploy.createRelease({ entries: [] }),
        Code.InvalidArgument,
        /^entries: a release needs at least one entry/,
      );
      await rejects(
        deploy.createRelease({ entries: [good, good] }),
        Code.InvalidArgument,
        /^entries\[1\]\.hostname: r-01 also appears at entries\[0\]/,
      );
      await rejects(
        deploy.createRelease({ entries: [good, { hostname: "r-02", storePath: "/tmp/x" }] }),
        Code.InvalidArgument,
        /^entries\[1\]\.store_path:/,
      );
      await rejects(
        deploy.createRelease({ entries: [{ ...good, platform: "x86 64" }] }),
        Code.InvalidArgument,
        /^entries\[0\]\.platform:/,
      );
      await rejects(
        deploy.createRelease({ entries: [good], cacheUrl: "ftp//x" }),
        Code.InvalidArgument,
        /^cache_url:/,
      );
      await rejects(
        deploy.createRelease({ entries: [good], flakeRev: "a\nb" }),
        Code.InvalidArgument,
        /^flake_rev:/,
      );
      assert.equal((await h.fleet("readonly").listReleases({ pageSize: 500 })).releases.length, before);
    });

    it("Create, Get, List (newest first, by host, paged), Diff, Delete", async () => {
      const a = await release(["rl-01", "rl-02", "rl-03"], 1);
      assert.match(a.id, /^rel-[0-9a-f-]{36}$/);
      assert.deepEqual(
        a.entries.map((e) => e.hostname),
        ["rl-01", "rl-02", "rl-03"],
      );
      assert.equal(a.hostCount, 3);
      assert.match(a.createdBy, /^apikey:test-deploy-/);
      const { release: b } = await h.fleet("deploy").createRelease({
        entries: [
          { hostname: "rl-02", storePath: storePath("sys-rl-02", 1) },
          { hostname: "rl-03", storePath: storePath("sys-rl-03", 9) },
          { hostname: "rl-04", storePath: storePath("sys-rl-04", 1) },
        ],
      });
      const ro = h.fleet("readonly");
      assert.deepEqual((await ro.getRelease({ releaseId: a.id })).release?.entries.length, 3);
      await rejects(ro.getRelease({ releaseId: "rel-00000000-0000-0000-0000-000000000000" }), Code.NotFound);
      await rejects(ro.getRelease({ releaseId: "nonsense" }), Code.InvalidArgument, /^release_id:/);
      const byHost = await ro.listReleases({ host: "rl-01" });
      assert.deepEqual(
        byHost.releases.map((r) => r.id),
        [a.id],
      );
      const page1 = await ro.listReleases({ pageSize: 1 });
      assert.equal(page1.releases[0]?.id, b!.id, "newest first");
      const page2 = await ro.listReleases({ pageSize: 1, pageToken: page1.nextPageToken });
      assert.equal(page2.releases[0]?.id, a.id);
      const diff = await ro.diffReleases({ fromReleaseId: a.id, toReleaseId: b!.id });
      assert.deepEqual(
        diff.added.map((e) => e.hostname),
        ["rl-04"],
      );
      assert.deepEqual(
        diff.removed.map((e) => e.hostname),
        ["rl-01"],
      );
      assert.deepEqual(
        diff.changed.map((c) => c.hostname),
        ["rl-03"],
      );
      assert.deepEqual(diff.unchanged, ["rl-02"]);
      await rejects(
        ro.diffReleases({ fromReleaseId: a.id, toReleaseId: "rel-00000000-0000-0000-0000-000000000000" }),
        Code.NotFound,
        /^to_release_id:/,
      );
      await rejects(h.fleet("deploy").deleteRelease({ releaseId: b!.id }), Code.PermissionDenied);
      await h.fleet("admin").deleteRelease({ releaseId: b!.id });
      await rejects(ro.getRelease({ releaseId: b!.id }), Code.NotFound);
      await rejects(h.fleet("admin").deleteRelease({ releaseId: b!.id }), Code.NotFound);
    });
  });

  describe("rollouts", () => {
    it("CreateRollout refuses bad parameters (INVALID_ARGUMENT naming the field) and stores nothing", async () => {
      await report("cr-01", ["cr"]);
      const rel = await release(["cr-01"]);
      const deploy = h.fleet("deploy");
      const before = (await h.fleet("readonly").listRollouts({ releaseId: rel.id })).rollouts.length;
      const base = {
        releaseId: rel.id,
        target: { tags: ["cr"] },
        strategy: RolloutStrategy.STAGED,
        batchSizes: ["1"],
      };
      await rejects(
        deploy.createRollout({ ...base, batchSizes: ["1", "0"] }),
        Code.InvalidArgument,
        /^batch_sizes\[1\]:/,
      );
      await rejects(
        deploy.createRollout({ ...base, failureThreshold: "lots" }),
        Code.InvalidArgument,
        /^failure_threshold:/,
      );
      await rejects(
        deploy.createRollout({ ...base, strategy: RolloutStrategy.UNSPECIFIED }),
        Code.InvalidArgument,
        /^strategy:/,
      );
      await rejects(deploy.createRollout({ ...base, target: {} }), Code.InvalidArgument, /^target:/);
      await rejects(
        deploy.createRollout({ ...base, healthTimeoutSeconds: 90_000 }),
        Code.InvalidArgument,
        /^health_timeout_seconds:/,
      );
      await rejects(
        deploy.createRollout({ ...base, onFailure: 5 as OnFailure }),
        Code.InvalidArgument,
        /^on_failure:/,
      );
      await rejects(
        deploy.createRollout({ ...base, releaseId: "rel-x" }),
        Code.InvalidArgument,
        /^release_id:/,
      );
      await rejects(
        deploy.createRollout({ ...base, releaseId: "rel-00000000-0000-0000-0000-000000000000" }),
        Code.NotFound,
        /release_id: release rel-0+-0000-0000-0000-0+ does not exist/,
      );
      await rejects(
        deploy.createRollout({ ...base, target: { tags: ["cr", "prod"] } }),
        Code.FailedPrecondition,
        /no active machines match tags cr,prod/,
      );
      await rejects(
        deploy.createRollout({ ...base, target: { hosts: ["cr-99"] } }),
        Code.NotFound,
        /machine cr-99 is not registered/,
      );
      assert.equal((await h.fleet("readonly").listRollouts({ releaseId: rel.id })).rollouts.length, before);
      assert.equal(
        (await h.agent("cr-01").getDesiredGeneration({ machineId: "cr-01" })).generation,
        undefined,
        "nothing assigned",
      );
    });

    it("lifecycle of a rollout via the API: create, get, list, pause, resume, cancel; conflicts are FAILED_PRECONDITION", async () => {
      await report("ro-01", ["ro"]);
      await report("ro-02", ["ro"]);
      const rel = await release(["ro-01", "ro-02"]);
      const deploy = h.fleet("deploy");
      const { rollout } = await deploy.createRollout({
        releaseId: rel.id,
        target: { tags: ["ro"] },
        strategy: RolloutStrategy.CANARY,
        failureThreshold: "0",
        onFailure: OnFailure.PAUSE,
        healthTimeoutSeconds: 600,
      });
      assert.ok(rollout);
      assert.equal(rollout.status, RolloutStatus.RUNNING);
      assert.deepEqual(rollout.batchSizes, ["1", "100%"]);
      assert.deepEqual(
        rollout.batches.map((b) => b.machines.map((m) => m.machineId)),
        [["ro-01"], ["ro-02"]],
      );
      assert.equal(rollout.cacheUrl, "https://cache.example.org", "the release's cache_url");
      // A second rollout touching the same machines is refused, naming machine and rollout.
      await rejects(
        deploy.createRollout({
          releaseId: rel.id,
          target: { hosts: ["ro-02"] },
          strategy: RolloutStrategy.ALL_AT_ONCE,
        }),
        Code.FailedPrecondition,
        new RegExp(`machine ro-02 is already in active rollout ${rollout.id}`),
      );
      // So is a one-off assignment to a machine in it.
      await rejects(
        deploy.setDesiredGeneration({ machineId: "ro-01", storePath: storePath("other") }),
        Code.FailedPrecondition,
        new RegExp(`in active rollout ${rollout.id}`),
      );
      // The release can't go while a rollout references it.
      await rejects(
        h.fleet("admin").deleteRelease({ releaseId: rel.id }),
        Code.FailedPrecondition,
        new RegExp(rollout.id),
      );

      await rejects(
        deploy.resumeRollout({ rolloutId: rollout.id }),
        Code.FailedPrecondition,
        /only a PAUSED rollout can be resumed/,
      );
      const paused = await deploy.pauseRollout({ rolloutId: rollout.id, reason: "maintenance window" });
      assert.equal(paused.rollout?.status, RolloutStatus.PAUSED);
      assert.equal(paused.rollout?.statusReason, "maintenance window");
      await rejects(deploy.pauseRollout({ rolloutId: rollout.id }), Code.FailedPrecondition);
      const resumed = await deploy.resumeRollout({ rolloutId: rollout.id });
      assert.equal(resumed.rollout?.status, RolloutStatus.RUNNING);
      const ro = h.fleet("readonly");
      assert.deepEqual(
        (await ro.listRollouts({ status: RolloutStatus.RUNNING, releaseId: rel.id })).rollouts.map(
          (r) => r.id,
        ),
        [rollout.id],
      );
      const got = await ro.getRollout({ rolloutId: rollout.id });
      assert.deepEqual(
        got.events.map((e) => e.type),
        [1, 2, 7, 8, 2].map((n) => n),
        "created, batch started, paused, resumed, batch started again",
      );
      const cancelled = await deploy.cancelRollout({ rolloutId: rollout.id, reason: "changed my mind" });
      assert.equal(cancelled.rollout?.status, RolloutStatus.CANCELLED);
      await rejects(
        deploy.cancelRollout({ rolloutId: rollout.id }),
        Code.FailedPrecondition,
        /already cancelled/,
      );
      await rejects(ro.getRollout({ rolloutId: "r-00000000-0000-0000-0000-000000000000" }), Code.NotFound);
      await rejects(ro.getRollout({ rolloutId: "nope" }), Code.InvalidArgument, /^rollout_id:/);
      const watchFirst = async (rolloutId: string) => {
        for await (const _ of ro.watchRollout({ rolloutId })) break;
      };
      await rejects(watchFirst("r-00000000-0000-0000-0000-000000000000"), Code.NotFound);
      await rejects(watchFirst("nope"), Code.InvalidArgument, /^rollout_id:/);
      await rejects(
        deploy.pauseRollout({ rolloutId: "r-00000000-0000-0000-0000-000000000000" }),
        Code.NotFound,
      );
      await rejects(
        deploy.pauseRollout({ rolloutId: rollout.id, reason: "x".repeat(2000) }),
        Code.InvalidArgument,
        /^reason:/,
      );
      // Watching a finished rollout: the snapshot, then the end of the stream.
      const finished: RolloutStatus[] = [];
      for await (const msg of ro.watchRollout({ rolloutId: rollout.id })) finished.push(msg.rollout!.status);
      assert.deepEqual(finished, [RolloutStatus.CANCELLED]);
      await rejects(ro.listRollouts({ status: 42 as RolloutStatus }), Code.InvalidArgument, /^status:/);
      // The machines are free again.
      await deploy.setDesiredGeneration({ machineId: "ro-01", storePath: storePath("other") });
    });
  });

  describe("fleet status and audit", () => {
    it("GetFleetStatus is the per-host record: desired, current, in sync, outcome, health, lifecycle, tags", async () => {
      const cur = storePath("sys-fs-01", 1);
      await report("fs-01", ["fs"], cur);
      await report("fs-02", ["fs"], cur);
      await h.fleet("deploy").setDesiredGeneration({ machineId: "fs-01", storePath: cur });
      await h
        .fleet("deploy")
        .setDesiredGeneration({ machineId: "fs-02", storePath: storePath("sys-fs-02", 2) });
      await h.agent("fs-01").reportHealth({ machineId: "fs-01", currentGeneration: cur, allPassed: true });
      const s = await h.fleet("readonly").getFleetStatus({ tags: ["fs"] });
      assert.equal(s.total, 2);
      assert.equal(s.inSync, 1);
      assert.equal(s.healthy, 1);
      assert.equal(s.stale, 0);
      assert.equal(s.staleAfterSeconds, 300);
      const [a, b] = s.machines;
      assert.equal(a?.machineId, "fs-01");
      assert.equal(a?.inSync, true);
      assert.equal(a?.health?.generation, cur);
      assert.equal(a?.lastOutcome, Outcome.UP_TO_DATE);
      assert.equal(a?.lifecycle, MachineLifecycle.ACTIVE);
      assert.deepEqual(a?.tags, ["fs"]);
      assert.ok(a?.lastSeen);
      assert.equal(b?.inSync, false);
      assert.equal(b?.desiredGeneration, storePath("sys-fs-02", 2));
      assert.equal(b?.health?.state, 1, "UNKNOWN before any health report");
    });

    it("GetFleetStatus answers binary and JSON clients alike, before and after a machine changes", async () => {
      const cur = storePath("sys-fe-01", 1);
      await report("fe-01", ["fe"], cur);
      await report("fe-02", ["fe"], cur);
      await h.fleet("deploy").setDesiredGeneration({ machineId: "fe-01", storePath: cur });
      await h.agent("fe-01").reportHealth({ machineId: "fe-01", currentGeneration: cur, allPassed: false });
      const both = async () => {
        const binary = await h.fleet("readonly", "grpc").getFleetStatus({ tags: ["fe"] });
        const json = await h.fleet("readonly", "connect-json").getFleetStatus({ tags: ["fe"] });
        // Last seen moves with the clock between the two calls; everything else must match.
        assert.deepEqual(
          { ...binary, machines: binary.machines.map((m) => ({ ...m, lastSeen: undefined })) },
          { ...json, machines: json.machines.map((m) => ({ ...m, lastSeen: undefined })) },
        );
        for (const [i, m] of binary.machines.entries()) {
          assert.ok(m.lastSeen && json.machines[i]!.lastSeen);
          assert.ok(Math.abs(Number(m.lastSeen.seconds - json.machines[i]!.lastSeen!.seconds)) <= 5);
        }
        return binary;
      };
      const before = await both();
      assert.equal(before.machines[0]!.health?.failingChecks.length, 0);
      assert.equal(before.machines[1]!.desiredGeneration, "");
      // A changed machine is rebuilt; the other keeps its bytes.
      await h
        .fleet("deploy")
        .setDesiredGeneration({ machineId: "fe-02", storePath: storePath("sys-fe-02", 2) });
      await h.agent("fe-01").reportHealth({ machineId: "fe-01", currentGeneration: cur, allPassed: true });
      const after = await both();
      assert.equal(after.machines[1]!.desiredGeneration, storePath("sys-fe-02", 2));
      assert.equal(after.healthy, 1);
      assert.equal(after.inSync, 1);
    });

    it("ListAuditEvents filters by actor, action, target and pages newest first", async () => {
      const ro = h.fleet("readonly");
      const all = await ro.listAuditEvents({ pageSize: 3 });
      assert.equal(all.events.length, 3);
      assert.ok(all.events[0]!.id > all.events[2]!.id, "newest first");
      const next = await ro.listAuditEvents({ pageSize: 3, pageToken: all.nextPageToken });
      assert.ok(next.events[0]!.id < all.events[2]!.id);
      const creates = await ro.listAuditEvents({ action: "release.create" });
      assert.ok(creates.events.length >= 2 && creates.events.every((e) => e.action === "release.create"));
      const mine = await ro.listAuditEvents({ actor: "machine:fs-01" });
      assert.ok(mine.events.some((e) => e.action === "machine.register"));
      const future = await ro.listAuditEvents({
        since: { seconds: BigInt(Math.floor(Date.now() / 1000) + 3600), nanos: 0 },
      });
      assert.equal(future.events.length, 0);
    });
  });
});
