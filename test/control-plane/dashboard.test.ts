/**
 * The dashboard's server side, in process on real sockets: the --dashboard-listen listener
 * (files with a strict CSP, FleetService for the page, no AgentService, no client-certificate
 * request in the TLS handshake), the agents' listener pointing at it, and the two RPCs the page
 * needs (GetCaller, GetMachineHistory).
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import https from "node:https";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { Code, ConnectError } from "@connectrpc/connect";
import { parseHostPort, resolveServeConfig } from "../../src/control-plane/config.js";
import { ApiKeyRole } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { HealthCheckKind, Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Clients, Harness } from "./harness.js";
import { storePath } from "./helpers.js";

const execFileP = promisify(execFile);

/** What `openssl s_client` reports about the server's CertificateRequest. */
async function clientCertRequested(url: string): Promise<boolean> {
  const { host } = new URL(url);
  const { stdout } = await execFileP("openssl", ["s_client", "-connect", host, "-servername", "localhost"], {
    timeout: 20_000,
  }).catch((err: { stdout?: string }) => ({ stdout: err.stdout ?? "" }));
  if (/No client certificate CA names sent/.test(stdout)) return false;
  if (/Acceptable client certificate CA names/.test(stdout)) return true;
  throw new Error(`cannot tell from openssl s_client's output:\n${stdout}`);
}

describe("dashboard server side", () => {
  const dir = makeTempDir("nixfleet-dashboard-");
  const bundle = join(dir, "bundle");
  let pki: Pki;
  let h: Harness;
  let dashboardUrl = "";

  before(async () => {
    pki = createPki(join(dir, "pki"));
    mkdirSync(bundle);
    writeFileSync(join(bundle, "index.html"), "<!doctype html><title>t</title>");
    writeFileSync(join(bundle, "app.js"), "export {};");
    writeFileSync(join(bundle, "app.css"), "body{}");
    h = await Harness.start(pki, {
      dashboardListen: { host: "127.0.0.1", port: 0 },
      dashboardDir: bundle,
    });
    dashboardUrl = h.cp.dashboardUrl!;
  });
  const get = (url: string) => getWithCa(pki.ca, url);
  after(async () => {
    await h.close();
    removeTempDir(dir);
  });

  it("--dashboard-listen takes host:port from the flag or NIXFLEET_CP_DASHBOARD_LISTEN", () => {
    const tls = { tlsCert: "c", tlsKey: "k", clientCa: "ca" };
    assert.equal(resolveServeConfig(tls, {}).dashboardListen, null);
    assert.deepEqual(resolveServeConfig({ ...tls, dashboardListen: "127.0.0.1:8444" }, {}).dashboardListen, {
      host: "127.0.0.1",
      port: 8444,
    });
    assert.deepEqual(
      resolveServeConfig(tls, { NIXFLEET_CP_DASHBOARD_LISTEN: ":9443" }).dashboardListen,
      parseHostPort("x", ":9443"),
    );
    assert.throws(
      () => resolveServeConfig({ ...tls, dashboardListen: "8444" }, {}),
      /^UsageError: --dashboard-listen: expected host:port/,
    );
  });

  it("serves the page with a strict content security policy", async () => {
    const page = await get(`${dashboardUrl}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers["content-type"] ?? "", /^text\/html/);
    const csp = page.headers["content-security-policy"] ?? "";
    for (const directive of [
      "default-src 'self'",
      "script-src 'self'",
      "style-src 'self'",
      "connect-src 'self'",
      "frame-ancestors 'none'",
    ])
      assert.ok(csp.split("; ").includes(directive), `${directive} in ${csp}`);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|https?:/);
    assert.equal(page.headers["x-content-type-options"], "nosniff");
    const js = await get(`${dashboardUrl}/assets/app.js`);
    assert.match(js.headers["content-type"] ?? "", /^text\/javascript/);
    assert.equal((await get(`${dashboardUrl}/assets/../../etc/passwd`)).status, 404);
    assert.equal((await get(`${dashboardUrl}/nope`)).status, 404);
  });

  it("asks agents for a client certificate on the main listener but not browsers on the dashboard's", async () => {
    assert.equal(await clientCertRequested(h.url), true);
    assert.equal(await clientCertRequested(dashboardUrl), false);
  });

  it("serves FleetService (with the same API keys and roles) but not AgentService on the dashboard listener", async () => {
    const clients = new Clients(dashboardUrl, pki);
    try {
      const fleet = clients.fleet(h.keys.readonly, "connect-h1");
      const caller = await fleet.getCaller({});
      assert.equal(caller.role, ApiKeyRole.READONLY);
      assert.match(caller.actor, /^apikey:test-readonly-/);
      await assert.rejects(
        fleet.pauseRollout({ rolloutId: "r-00000000-0000-0000-0000-000000000000" }),
        (err) => ConnectError.from(err).code === Code.PermissionDenied,
      );
      await assert.rejects(
        clients.fleet(null, "connect").getCaller({}),
        (err) => ConnectError.from(err).code === Code.Unauthenticated,
      );
      const agent = clients.agent("web-01", { protocol: "connect" });
      await assert.rejects(
        agent.getDesiredGeneration({ machineId: "web-01" }),
        (err) => ConnectError.from(err).code === Code.Unimplemented,
        "agents use the mTLS listener",
      );
      assert.equal((await get(`${dashboardUrl}/readyz`)).status, 200);
    } finally {
      await clients.close();
    }
  });

  it("the agents' listener says where the dashboard is", async () => {
    const res = await get(`${h.url}/`);
    assert.equal(res.status, 404);
    assert.match(res.body, new RegExp(`the dashboard is at ${dashboardUrl}/`));
  });

  it("GetMachineHistory returns a machine's reports newest first and its latest health checks", async () => {
    const agent = h.agent("hist-01");
    const v1 = storePath("hist", 1);
    const v2 = storePath("hist", 2);
    await agent.report({
      machineId: "hist-01",
      currentGeneration: v1,
      outcome: Outcome.UP_TO_DATE,
      success: true,
    });
    await agent.report({
      machineId: "hist-01",
      currentGeneration: v1,
      desiredGeneration: v2,
      outcome: Outcome.ROLLED_BACK,
      message: "switch-to-configuration exited with code 3: error: boom",
      deploymentId: "d-1",
    });
    await agent.reportHealth({
      machineId: "hist-01",
      currentGeneration: v1,
      allPassed: false,
      results: [
        { name: "sshd.service", kind: HealthCheckKind.SYSTEMD, passed: true, durationMs: 3 },
        { name: "app", kind: HealthCheckKind.COMMAND, passed: false, durationMs: 9, message: "exit 1" },
      ],
    });
    const history = await h.fleet("readonly").getMachineHistory({ machineId: "hist-01" });
    assert.deepEqual(
      history.reports.map((r) => Outcome[r.outcome]),
      ["ROLLED_BACK", "UP_TO_DATE"],
    );
    assert.equal(history.reports[0]!.message, "switch-to-configuration exited with code 3: error: boom");
    assert.equal(history.reports[0]!.desiredGeneration, v2);
    assert.equal(history.reports[0]!.deploymentId, "d-1");
    assert.equal(history.latestHealth?.allPassed, false);
    assert.deepEqual(
      history.latestHealth?.results.map((r) => [r.name, r.passed, r.message]),
      [
        ["sshd.service", true, ""],
        ["app", false, "exit 1"],
      ],
    );
    const one = await h.fleet("readonly").getMachineHistory({ machineId: "hist-01", pageSize: 1 });
    assert.equal(one.reports.length, 1);

    await assert.rejects(
      h.fleet("readonly").getMachineHistory({ machineId: "nope-99" }),
      (err) => ConnectError.from(err).code === Code.NotFound,
    );
    await assert.rejects(
      h.fleet("readonly").getMachineHistory({ machineId: "" }),
      (err) => ConnectError.from(err).code === Code.InvalidArgument && /machine_id/.test(String(err)),
    );
  });
});

/** GET over HTTPS trusting the test CA (Node's fetch has no per-call CA option). */
function getWithCa(
  ca: string,
  url: string,
): Promise<{ status: number; headers: Record<string, string>; body: string }> {
  return new Promise((resolve, reject) => {
    https
      .get(url, { ca: readFileSync(ca) }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => {
          body += c;
        });
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers as Record<string, string>, body }),
        );
      })
      .on("error", reject);
  });
}

describe("dashboard server side with --allow-insecure", () => {
  it("serves the page and FleetService over plain HTTP on the dashboard listener", async () => {
    const dir = makeTempDir("nixfleet-dashboard-insecure-");
    const bundle = join(dir, "bundle");
    mkdirSync(bundle);
    writeFileSync(join(bundle, "index.html"), "<!doctype html><title>t</title>");
    writeFileSync(join(bundle, "app.js"), "export {};");
    const h = await Harness.start(createPki(join(dir, "pki")), {
      allowInsecure: true,
      dashboardListen: { host: "127.0.0.1", port: 0 },
      dashboardDir: bundle,
    });
    try {
      const url = h.cp.dashboardUrl!;
      assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
      const page = await fetch(`${url}/`);
      assert.equal(page.status, 200);
      assert.match(page.headers.get("content-security-policy") ?? "", /default-src 'self'/);
      const caller = await fetch(`${url}/nixfleet.v1.FleetService/GetCaller`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${h.keys.deploy}` },
        body: "{}",
      });
      assert.equal(caller.status, 200);
      assert.equal(((await caller.json()) as { role: string }).role, "API_KEY_ROLE_DEPLOY");
    } finally {
      await h.close();
      removeTempDir(dir);
    }
  });
});
