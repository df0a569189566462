/**
 * Health checks for real: shell commands, HTTP against a real local server, and the systemd
 * kinds against a stand-in `systemctl` (systemd is not PID 1 here; the nspawn tier tests the
 * real one). Then the runner: per-check intervals, cache invalidation on a generation change,
 * verify retrying until the checks pass or the deadline.
 */
import assert from "node:assert/strict";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  checksFromConfig,
  commandCheck,
  httpCheck,
  systemdUnitCheck,
  systemRunningCheck,
} from "../../src/agent/health/checks.js";
import { describeFailures, HealthRunner } from "../../src/agent/health/runner.js";
import { AgentMetrics } from "../../src/agent/metrics.js";
import { waitFor } from "../fixtures/host.js";
import { makeTempDir, removeTempDir, tempDir } from "../fixtures/tmp.js";

describe("command checks", () => {
  it("passes on exit 0 and fails with the exit code and trimmed output", async () => {
    assert.deepEqual(await commandCheck("ok", "true", 5000, 1000).run(), { passed: true, message: "exit 0" });
    const failed = await commandCheck("bad", "echo 'disk almost full' >&2; exit 3", 5000, 1000).run();
    assert.equal(failed.passed, false);
    assert.match(failed.message, /exited with code 3: disk almost full/);
  });

  it("runs with /bin/sh and kills the whole command on timeout", async (t) => {
    const dir = tempDir(t);
    const marker = join(dir, "still-running");
    const result = await commandCheck("slow", `sleep 30; touch ${marker}`, 300, 1000).run();
    assert.equal(result.passed, false);
    assert.match(result.message, /timed out/);
    assert.equal(existsSync(marker), false);
  });
});

describe("HTTP checks", () => {
  let server: Server;
  let base: string;
  before(async () => {
    server = createServer((req, res) => {
      if (req.url === "/ok") res.writeHead(200).end("ok");
      else if (req.url === "/created") res.writeHead(204).end();
      else if (req.url === "/broken") res.writeHead(500).end("boom");
      else if (req.url === "/moved") res.writeHead(302, { location: "/ok" }).end();
      // "/hang": never answers
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  });

  it("passes on the expected status, fails otherwise", async () => {
    assert.deepEqual(await httpCheck(`${base}/ok`, 200, 3000, 5000).run(), {
      passed: true,
      message: "HTTP 200",
    });
    assert.equal((await httpCheck(`${base}/created`, 204, 3000, 5000).run()).passed, true);
    const broken = await httpCheck(`${base}/broken`, 200, 3000, 5000).run();
    assert.deepEqual(broken, { passed: false, message: "HTTP 500, expected 200" });
  });

  it("does not follow redirects (a redirect to a page that answers 200 is not health)", async () => {
    const moved = await httpCheck(`${base}/moved`, 200, 3000, 5000).run();
    assert.deepEqual(moved, { passed: false, message: "HTTP 302, expected 200" });
  });

  it("fails on a refused connection and on no answer within the timeout", async () => {
    const refused = await httpCheck("http://127.0.0.1:9/", 200, 3000, 5000).run();
    assert.equal(refused.passed, false);
    assert.match(refused.message, /request failed: ECONNREFUSED/);
    const hung = await httpCheck(`${base}/hang`, 200, 300, 5000).run();
    assert.deepEqual(hung, { passed: false, message: "no response within 0.3 s" });
  });
});

describe("systemd checks (stand-in systemctl)", () => {
  const dir = makeTempDir("nixfleet-systemctl-");
  const systemctl = join(dir, "systemctl");
  before(() => {
    // is-active: nginx active, anything else failed; is-system-running: from a file.
    writeFileSync(
      systemctl,
      `#!/bin/sh
case "$1" in
  is-active) if [ "$2" = nginx.service ]; then echo active; exit 0; else echo failed; exit 3; fi ;;
  is-system-running) cat ${dir}/state; [ "$(cat ${dir}/state)" = running ] ;;
esac
`,
    );
    chmodSync(systemctl, 0o755);
  });
  after(() => removeTempDir(dir));

  it("a unit must be active", async () => {
    const env = { systemctl };
    assert.deepEqual(await systemdUnitCheck("nginx.service", 5000, 1000, env).run(), {
      passed: true,
      message: "active",
    });
    assert.deepEqual(await systemdUnitCheck("postgresql.service", 5000, 1000, env).run(), {
      passed: false,
      message: "unit is failed, not active",
    });
  });

  it("the built-in check accepts running and degraded, nothing else", async () => {
    const env = { systemctl };
    for (const [state, passed] of [
      ["running", true],
      ["degraded", true],
      ["starting", false],
      ["maintenance", false],
    ] as const) {
      writeFileSync(join(dir, "state"), state);
      const r = await systemRunningCheck(5000, 1000, env).run();
      assert.equal(r.passed, passed, state);
    }
  });

  it("fails clearly when systemctl is missing (not a systemd host)", async () => {
    const r = await systemdUnitCheck("nginx.service", 5000, 1000, { systemctl: join(dir, "nope") }).run();
    assert.equal(r.passed, false);
    assert.match(r.message, /could not be started/);
  });

  it("uses the built-in check only when nothing is configured", () => {
    const none = checksFromConfig(
      { healthChecks: { systemd: [], http: [], command: [] }, healthInterval: 60 },
      { systemctl },
    );
    assert.deepEqual(
      none.map((c) => [c.kind, c.name]),
      [["systemd", "systemd-system"]],
    );
    const some = checksFromConfig(
      {
        healthChecks: {
          systemd: [{ units: ["a.service", "b.service"], timeout: 5, interval: 10 }],
          http: [{ url: "http://x/", expectedStatus: 200, timeout: 3, interval: 5 }],
          command: [{ name: "c", command: "true", timeout: 5, interval: 10 }],
        },
        healthInterval: 60,
      },
      { systemctl },
    );
    assert.deepEqual(
      some.map((c) => [c.kind, c.name, c.timeoutMs, c.intervalMs]),
      [
        ["systemd", "a.service", 5000, 10000],
        ["systemd", "b.service", 5000, 10000],
        ["http", "http://x/", 3000, 5000],
        ["command", "c", 5000, 10000],
      ],
    );
  });
});

describe("health runner", () => {
  /** A command check that counts its runs in a file and passes from run `passFrom` on. */
  function counting(dir: string, name: string, intervalMs: number, passFrom = 1) {
    const file = join(dir, name);
    writeFileSync(file, "0");
    const check = commandCheck(
      name,
      `n=$(($(cat ${file}) + 1)); echo $n > ${file}; [ $n -ge ${passFrom} ] || { echo "attempt $n" >&2; exit 1; }`,
      5000,
      intervalMs,
    );
    return { check, runs: () => Number(readFileSync(file, "utf8")) };
  }

  it("honours each check's interval in periodic runs and re-runs everything on a new generation", async (t) => {
    const dir = tempDir(t);
    const slow = counting(dir, "slow", 3_600_000);
    const fast = counting(dir, "fast", 0);
    const metrics = new AgentMetrics();
    const runner = new HealthRunner([slow.check, fast.check], metrics);
    const first = await runner.runDue("/nix/store/a");
    assert.equal(first.allPassed, true);
    await runner.runDue("/nix/store/a");
    await runner.runDue("/nix/store/a");
    assert.equal(slow.runs(), 1, "the hourly check ran once, its result reused");
    assert.equal(fast.runs(), 3);
    await runner.runDue("/nix/store/b");
    assert.equal(slow.runs(), 2, "results of another generation are not reused");
    const status = (await metrics.healthCheckStatus.get()).values.map((v) => [
      v.labels["check_name"],
      v.value,
    ]);
    assert.deepEqual(status.sort(), [
      ["fast", 1],
      ["slow", 1],
    ]);
    const durations = (await metrics.healthCheckDuration.get()).values.filter((v) =>
      v.metricName?.endsWith("_count"),
    );
    assert.ok(durations.some((v) => v.labels["check_type"] === "command"));
  });

  it("verify retries failing checks until they pass (a service that needs a moment)", async (t) => {
    const dir = tempDir(t);
    const recovering = counting(dir, "recovering", 10_000, 3);
    const steady = counting(dir, "steady", 10_000);
    const runner = new HealthRunner([recovering.check, steady.check]);
    const rounds: boolean[] = [];
    const result = await runner.verify("/nix/store/a", {
      deadline: Date.now() + 30_000,
      retryDelayMs: 20,
      onRound: (s) => rounds.push(s.allPassed),
    });
    assert.equal(result.allPassed, true);
    assert.equal(recovering.runs(), 3);
    assert.equal(steady.runs(), 1, "a passing check is not re-run");
    assert.deepEqual(rounds, [false, false, true]);
  });

  it("verify gives up at the deadline with the latest failure of each check", async (t) => {
    const dir = tempDir(t);
    const never = counting(dir, "never", 10_000, 1_000_000);
    const runner = new HealthRunner([never.check]);
    const result = await runner.verify("/nix/store/a", { deadline: Date.now() + 300, retryDelayMs: 50 });
    assert.equal(result.allPassed, false);
    assert.ok(never.runs() >= 2, "it was retried");
    assert.match(
      describeFailures(result),
      new RegExp(`never \\(exited with code 1: attempt ${never.runs()}\\)`),
    );
  });

  it("verify stops when aborted (agent shutdown)", async (t) => {
    const dir = tempDir(t);
    const never = counting(dir, "never", 10_000, 1_000_000);
    const runner = new HealthRunner([never.check]);
    const controller = new AbortController();
    const p = runner.verify("/nix/store/a", {
      deadline: Date.now() + 60_000,
      retryDelayMs: 10_000,
      signal: controller.signal,
    });
    // Abort during the pause after the first (failing) round.
    await waitFor("the first round", () => never.runs() === 1);
    controller.abort();
    const result = await p;
    assert.equal(result.allPassed, false);
    assert.equal(never.runs(), 1);
  });
});
