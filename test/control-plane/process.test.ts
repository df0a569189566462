/**
 * The real `nixfleet-control-plane` program as a process: flags and exit codes, the local
 * `keys` command, the start-up gate, graceful SIGTERM, the metrics listener, and a second
 * process finishing a rollout the first one (killed) left half done.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import Database from "better-sqlite3";
import { RolloutStatus, RolloutStrategy } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { TEST_STORE } from "../fixtures/postgres.js";
import { makeTempDir, removeTempDir, tempDir } from "../fixtures/tmp.js";
import { Clients } from "./harness.js";
import { Feed, Inbox, storePath, waitFor } from "./helpers.js";
import { type CpProcess, runCli, startCp, tlsArgs } from "./process.js";

/** Tests of the SQLite file itself (its locks, its schema table) skip on PostgreSQL. */
const sqliteOnly = TEST_STORE === "postgres" && "SQLite-specific (NIXFLEET_TEST_STORE=postgres)";

describe("nixfleet-control-plane as a process", () => {
  const dir = makeTempDir();
  let pki: Pki;
  const running: CpProcess[] = [];
  const clients: Clients[] = [];
  before(() => {
    pki = createPki(join(dir, "pki"));
  });
  after(async () => {
    for (const c of clients) await c.close();
    for (const p of running) await p.stop("SIGKILL");
    removeTempDir(dir);
  });

  async function start(args: string[], options: Parameters<typeof startCp>[1] = {}) {
    const p = await startCp(args, options);
    running.push(p);
    return p;
  }
  function clientsFor(p: CpProcess) {
    const c = new Clients(p.url, pki);
    clients.push(c);
    return c;
  }
  async function adminKey(db: string): Promise<string> {
    const r = await runCli([
      "keys",
      "create",
      "--init",
      "--name",
      `admin-${Math.random().toString(36).slice(2, 8)}`,
      "--role",
      "admin",
      "--db-path",
      db,
    ]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim();
  }

  describe("usage and start-up errors", () => {
    const cases: [string, string[], number, RegExp][] = [
      ["no TLS and no --allow-insecure", ["serve", "--listen", "127.0.0.1:0"], 2, /--tls-cert: required/],
      [
        "a bad --listen",
        ["serve", "--listen", "nowhere", "--allow-insecure"],
        2,
        /--listen: expected host:port/,
      ],
      [
        "a bad --poll-hint",
        ["serve", "--allow-insecure", "--poll-hint", "soon"],
        2,
        /--poll-hint: expected a whole number/,
      ],
      ["an unknown flag", ["serve", "--frobnicate"], 2, /unknown option '--frobnicate'/],
      ["an unknown command", ["explode"], 2, /too many arguments|unknown command/],
      [
        "a bad role",
        ["keys", "create", "--name", "x", "--role", "root", "--db-path", "/tmp/never.db"],
        2,
        /--role: must be one of readonly, deploy, admin/,
      ],
      ["a missing --name", ["keys", "create", "--role", "admin"], 2, /required option '--name <name>'/],
    ];
    for (const [name, args, code, message] of cases) {
      it(`${name} → exit ${code}`, async () => {
        const r = await runCli(args);
        assert.equal(r.code, code, r.stderr);
        assert.match(r.stderr, message);
      });
    }

    it("a missing certificate file → exit 1 naming the flag and the path", async () => {
      const r = await runCli([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db-path",
        join(dir, "x.db"),
        "--tls-cert",
        join(dir, "nope.pem"),
        "--tls-key",
        pki.server.key,
        "--client-ca",
        pki.ca,
      ]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /--tls-cert: cannot read .*nope\.pem: file does not exist/);
    });

    it("a port in use → exit 1 saying so", async (t) => {
      const db = join(tempDir(t), "a.db");
      const first = await start(["--listen", "127.0.0.1:0", "--db-path", db, ...tlsArgs(pki)]);
      const port = new URL(first.url).port;
      const r = await runCli([
        "serve",
        "--listen",
        `127.0.0.1:${port}`,
        "--db-path",
        join(tempDir(t), "b.db"),
        ...tlsArgs(pki),
      ]);
      assert.equal(r.code, 1);
      assert.match(
        r.stderr,
        new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: the address is already in use`),
      );
      await first.stop();
    });

    it("a database from a newer control plane → exit 1 with what to do", { skip: sqliteOnly }, async (t) => {
      const db = join(tempDir(t), "state.db");
      await adminKey(db);
      const raw = new Database(db);
      raw.prepare("INSERT INTO schema_version (version, name, applied_at) VALUES (999, 'future', 0)").run();
      raw.close();
      const r = await runCli(["serve", "--listen", "127.0.0.1:0", "--db-path", db, ...tlsArgs(pki)]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /schema is at version 999, newer than this control plane knows/);
    });
  });

  it("keys create/list/revoke work on the database, also while the server runs, and revocation is immediate", async (t) => {
    const db = join(tempDir(t), "state.db");
    const secret = await adminKey(db);
    const p = await start(["--listen", "127.0.0.1:0", "--db-path", db, ...tlsArgs(pki)]);
    const c = clientsFor(p);
    const created = await runCli(["keys", "create", "--name", "ops", "--role", "deploy", "--db-path", db]);
    assert.equal(created.code, 0, created.stderr);
    const ops = created.stdout.trim();
    assert.match(ops, /^nfk-[0-9a-f]{64}$/);
    assert.match(created.stderr, /created API key ops .* with role deploy/);
    await c.fleet(ops).listMachines({});
    const listed = await runCli(["keys", "list", "--json", "--db-path", db]);
    const keys = (
      JSON.parse(listed.stdout) as { apiKeys: { name: string; role: string; lastUsedAt?: string }[] }
    ).apiKeys;
    assert.deepEqual(
      keys.map((k) => [k.name.startsWith("admin") ? "admin" : k.name, k.role]),
      [
        ["admin", "API_KEY_ROLE_ADMIN"],
        ["ops", "API_KEY_ROLE_DEPLOY"],
      ],
    );
    assert.ok(keys[1]!.lastUsedAt, "the server recorded the use");
    assert.ok(!listed.stdout.includes(ops.slice(4)), "no secrets in the list");
    const table = await runCli(["keys", "list", "--db-path", db]);
    assert.match(table.stdout, /^ID\s+NAME\s+ROLE\s+CREATED\s+LAST USED\s+REVOKED$/m);
    const dup = await runCli(["keys", "create", "--name", "ops", "--role", "admin", "--db-path", db]);
    assert.equal(dup.code, 1);
    assert.match(dup.stderr, /an API key named ops already exists/);
    const revoked = await runCli(["keys", "revoke", "ops", "--db-path", db]);
    assert.equal(revoked.code, 0, revoked.stderr);
    await assert.rejects(
      c.fleet(ops).listMachines({}),
      (e: unknown) => ConnectError.from(e).code === Code.Unauthenticated,
    );
    await c.fleet(secret).listMachines({});
    const again = await runCli(["keys", "revoke", "ops", "--db-path", db]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /no API key with id or name ops/);
  });

  it("while the database is locked at start-up: bound, RPCs UNAVAILABLE, /readyz 503; then ready", {
    skip: sqliteOnly,
  }, async (t) => {
    // A fresh file another process holds locked: the server cannot even switch it to WAL yet.
    const db = join(tempDir(t), "state.db");
    const holder = new Database(db);
    holder.exec("BEGIN EXCLUSIVE");
    let released = false;
    t.after(() => {
      if (!released) holder.close();
    });
    const p = await start(["--listen", "127.0.0.1:0", "--db-path", db, ...tlsArgs(pki)], {
      waitForMsg: "bound; opening the database",
    });
    const c = clientsFor(p);
    await waitFor("the lock wait to be logged", () =>
      p.logs().some((l) => /locked by another process; waiting/.test(String(l["msg"]))),
    );
    await assert.rejects(c.agent("web-01").getDesiredGeneration({ machineId: "web-01" }), (e: unknown) => {
      const err = ConnectError.from(e);
      return err.code === Code.Unavailable && /starting/.test(err.rawMessage);
    });
    const ready = await fetchStatus(p.url, "/readyz");
    assert.equal(ready, 503);
    holder.exec("COMMIT");
    holder.close();
    released = true;
    await waitFor("listening", () => p.logs().some((l) => l["msg"] === "listening"));
    assert.equal(await fetchStatus(p.url, "/readyz"), 200);
    assert.equal(
      (await c.agent("web-01").getDesiredGeneration({ machineId: "web-01" })).generation,
      undefined,
    );
  });

  it("SIGTERM: open streams end with UNAVAILABLE, the process exits 0", async (t) => {
    const db = join(tempDir(t), "state.db");
    const p = await start(["--listen", "127.0.0.1:0", "--db-path", db, ...tlsArgs(pki)]);
    const c = clientsFor(p);
    const feed = new Feed<never>();
    feed.push({ message: { case: "hello", value: { machineId: "web-01" } } } as never);
    const inbox = new Inbox(c.agent("web-01").session(feed));
    await inbox.next("initial", () => true);
    const watch = new Inbox(c.agent("web-02", { protocol: "connect-h1" }).watch({ machineId: "web-02" }));
    await watch.next("initial", () => true);
    p.proc.kill("SIGTERM");
    const exit = await p.exited;
    assert.deepEqual(exit, { code: 0, signal: null });
    await inbox.finished;
    await watch.finished;
    assert.equal(ConnectError.from(inbox.error).code, Code.Unavailable, String(inbox.error));
    assert.match(ConnectError.from(inbox.error).rawMessage, /shutting down/);
    assert.ok(watch.error, "the Watch stream ended with an error");
    const msgs = p.logs().map((l) => l["msg"]);
    assert.ok(msgs.includes("signal received; shutting down") && msgs.includes("stopped"), msgs.join("\n"));
    feed.end();
  });

  it("--metrics-listen serves /metrics on plain HTTP; --metrics-require-key protects it", async (t) => {
    const db = join(tempDir(t), "state.db");
    const key = await adminKey(db);
    const p = await start([
      "--listen",
      "127.0.0.1:0",
      "--db-path",
      db,
      ...tlsArgs(pki),
      "--metrics-listen",
      "127.0.0.1:0",
      "--metrics-require-key",
    ]);
    assert.match(p.metricsUrl ?? "", /^http:\/\/127\.0\.0\.1:\d+$/);
    const anon = await fetch(`${p.metricsUrl}/metrics`);
    assert.equal(anon.status, 401);
    const ok = await fetch(`${p.metricsUrl}/metrics`, { headers: { authorization: `Bearer ${key}` } });
    assert.equal(ok.status, 200);
    assert.match(await ok.text(), /^nixfleet_fleet_size 0$/m);
    assert.equal((await fetch(`${p.metricsUrl}/healthz`)).status, 200);
    assert.equal(
      (await fetch(`${p.metricsUrl}/nixfleet.v1.FleetService/ListMachines`, { method: "POST" })).status,
      404,
    );
  });

  it("--allow-insecure warns loudly and serves plain HTTP", async (t) => {
    const db = join(tempDir(t), "state.db");
    const p = await start(["--listen", "127.0.0.1:0", "--db-path", db, "--allow-insecure"]);
    assert.match(p.url, /^http:\/\//);
    const warning = p.logs().find((l) => l["level"] === "warn" && /PLAIN HTTP/.test(String(l["msg"])));
    assert.ok(warning, "a warning about plain HTTP");
    assert.equal((await fetch(`${p.url}/readyz`)).status, 200);
  });

  it("survives malformed traffic: garbage bytes, plain HTTP on the TLS port, broken gRPC frames, bad JSON, oversized headers", async (t) => {
    const db = join(tempDir(t), "state.db");
    const p = await start(["--listen", "127.0.0.1:0", "--db-path", db, ...tlsArgs(pki)]);
    const { port } = new URL(p.url);
    const web01 = pki.client("web-01");
    const raw = (bytes: Buffer) =>
      new Promise<void>((resolve) => {
        const s = net.connect(Number(port), "127.0.0.1", () => s.end(bytes));
        s.on("error", () => resolve());
        s.on("close", () => resolve());
        s.setTimeout(5000, () => s.destroy());
      });
    await raw(Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    await raw(randomBytes(4096));
    await raw(Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]), randomBytes(512)]));
    const curl = (args: string[]) =>
      new Promise<void>((resolve) =>
        execFile("curl", ["-sk", "-m", "10", "-o", "/dev/null", ...args], () => resolve()),
      );
    const agentTls = ["--cert", web01.cert, "--key", web01.key];
    // A gRPC frame announcing 1 GiB, one that is cut short, and a body that is not protobuf.
    const frames = [
      Buffer.from([0, 0x40, 0, 0, 0, 1, 2, 3]),
      Buffer.from([0, 0, 0, 0, 9, 1]),
      Buffer.from([0, 0, 0, 0, 3, 0xff, 0xff, 0xff]),
    ];
    for (const [i, frame] of frames.entries()) {
      const file = join(tempDir(t), `frame-${i}`);
      writeFileSync(file, frame);
      await curl([
        ...agentTls,
        "--http2",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        `@${file}`,
        `${p.url}/nixfleet.v1.AgentService/Report`,
      ]);
    }
    await curl([
      ...agentTls,
      "-H",
      "content-type: application/json",
      "-d",
      '{"machineId": [',
      `${p.url}/nixfleet.v1.AgentService/Report`,
    ]);
    await curl([
      ...agentTls,
      "-H",
      "content-type: application/json",
      "-d",
      '{"outcome": "NOPE"}',
      `${p.url}/nixfleet.v1.AgentService/Report`,
    ]);
    await curl(["-H", `x-big: ${"a".repeat(100_000)}`, `${p.url}/healthz`]);
    await curl(["--http1.1", "-H", `x-big: ${"a".repeat(100_000)}`, `${p.url}/healthz`]);
    await curl(["-H", "content-type: application/proto", "-d", "x", `${p.url}/nixfleet.v1.Nope/Nothing`]);
    // Still alive and answering.
    assert.equal(await fetchStatus(p.url, "/healthz"), 200);
    const c = clientsFor(p);
    assert.equal(
      (await c.agent("web-01").getDesiredGeneration({ machineId: "web-01" })).generation,
      undefined,
    );
    assert.equal(p.proc.exitCode, null);
  });

  it("a control plane killed mid-rollout: a second process on the same database finishes the rollout", async (t) => {
    const db = join(tempDir(t), "state.db");
    const key = await adminKey(db);
    const args = ["--listen", "127.0.0.1:0", "--db-path", db, ...tlsArgs(pki), "--executor-tick", "0.2"];
    const first = await start(args);
    let c = clientsFor(first);
    const ids = ["rs-01", "rs-02", "rs-03"];
    for (const id of ids)
      await c.agent(id).report({
        machineId: id,
        currentGeneration: storePath(id, 1),
        outcome: Outcome.UP_TO_DATE,
        tags: ["rs"],
      });
    const { release } = await c
      .fleet(key)
      .createRelease({ entries: ids.map((id) => ({ hostname: id, storePath: storePath(id, 2) })) });
    const { rollout } = await c.fleet(key).createRollout({
      releaseId: release!.id,
      target: { tags: ["rs"] },
      strategy: RolloutStrategy.STAGED,
      batchSizes: ["1", "1", "1"],
    });
    const deploy = async (cl: Clients, id: string) => {
      const target = storePath(id, 2);
      await cl.agent(id).report({
        machineId: id,
        currentGeneration: target,
        desiredGeneration: target,
        outcome: Outcome.DEPLOYED,
        success: true,
        tags: ["rs"],
      });
      await cl
        .agent(id)
        .reportHealth({ machineId: id, currentGeneration: target, allPassed: true, postApply: true });
    };
    await deploy(c, "rs-01");
    await waitFor(
      "batch 2 started",
      async () => (await c.fleet(key).getRollout({ rolloutId: rollout!.id })).rollout?.currentBatch === 1,
    );
    // Crash: no shutdown, no chance to tidy up.
    await first.stop("SIGKILL");
    const second = await start(args);
    c = clientsFor(second);
    assert.equal(
      (await c.agent("rs-02").getDesiredGeneration({ machineId: "rs-02" })).generation?.hash,
      storePath("rs-02", 2),
    );
    await deploy(c, "rs-02");
    await waitFor(
      "batch 3 started",
      async () => (await c.fleet(key).getRollout({ rolloutId: rollout!.id })).rollout?.currentBatch === 2,
    );
    await deploy(c, "rs-03");
    await waitFor(
      "completed",
      async () =>
        (await c.fleet(key).getRollout({ rolloutId: rollout!.id })).rollout?.status ===
        RolloutStatus.COMPLETED,
    );
    assert.equal((await c.fleet(key).getFleetStatus({ tags: ["rs"] })).inSync, 3);
  });
});

async function fetchStatus(url: string, path: string): Promise<number> {
  // The server certificate is signed by the test CA; -k keeps this a plain status probe.
  return new Promise((resolve) => {
    execFile("curl", ["-sk", "-o", "/dev/null", "-w", "%{http_code}", `${url}${path}`], (_err, stdout) =>
      resolve(Number(stdout)),
    );
  });
}
