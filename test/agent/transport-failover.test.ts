/**
 * Several control-plane URLs: the option accepts one URL or a list (and a comma-separated flag or
 * variable), and the transport moves to the next URL when one is unreachable — unary calls at
 * once within the call, the push stream after its reconnect back-off — and stays on the one that
 * answered. Against real control-plane processes (sharing nothing: failover needs no shared
 * store) and, for the push stream, the real agent process.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { ConfigError } from "../../src/agent/config/errors.js";
import { loadAgentConfig, parseAgentConfig } from "../../src/agent/config.js";
import { Journal } from "../../src/agent/journal/journal.js";
import { AgentMetrics } from "../../src/agent/metrics.js";
import { type AgentConnection, connectAgentService } from "../../src/agent/transport/client.js";
import { Reporter } from "../../src/agent/transport/reporter.js";
import { FailoverTransport } from "../../src/common/failover-transport.js";
import { createLogger } from "../../src/common/logger.js";
import { loadTlsMaterial } from "../../src/common/tls.js";
import { AgentService } from "../../src/gen/nixfleet/v1/agent_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { type CpProcess, startCp, tlsArgs } from "../control-plane/process.js";
import { createHost, waitFor } from "../fixtures/host.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

const GEN1 = "/nix/store/0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-1";

describe("agent config: controlPlaneUrl is one URL or a list", () => {
  const SRC = "/etc/nixfleet/agent.json";

  it("takes a single string (as before lists) or a list, normalised, in order", () => {
    assert.deepEqual(parseAgentConfig({ controlPlaneUrl: "https://cp:8443/" }, SRC).controlPlaneUrl, [
      "https://cp:8443",
    ]);
    assert.deepEqual(
      parseAgentConfig({ controlPlaneUrl: ["https://b.example/", "https://a.example:8443"] }, SRC)
        .controlPlaneUrl,
      ["https://b.example", "https://a.example:8443"],
    );
  });

  it("takes a comma-separated list from a flag or variable", () => {
    const dir = makeTempDir("nixfleet-urls-");
    try {
      const file = join(dir, "agent.json");
      writeFileSync(file, "{}");
      const fromEnv = loadAgentConfig({
        configPath: file,
        env: { NIXFLEET_CONTROL_PLANE_URL: "https://a:1, https://b:2" },
        flags: {},
      });
      assert.deepEqual(fromEnv.config.controlPlaneUrl, ["https://a:1", "https://b:2"]);
      const fromFlag = loadAgentConfig({
        configPath: file,
        env: {},
        flags: { controlPlaneUrl: "https://c:3" },
      });
      assert.deepEqual(fromFlag.config.controlPlaneUrl, ["https://c:3"]);
    } finally {
      removeTempDir(dir);
    }
  });

  const bad: Array<[string, unknown, string, RegExp]> = [
    ["an empty list", [], "controlPlaneUrl", /at least one URL/],
    ["a number", 8443, "controlPlaneUrl", /a URL or a JSON array of URLs/],
    ["a bad entry", ["https://a", "ftp://b"], "controlPlaneUrl[1]", /https:\/\//],
    ["a non-string entry", ["https://a", 7], "controlPlaneUrl[1]", /must be a string/],
    ["the same URL twice", ["https://a/", "https://a"], "controlPlaneUrl[1]", /twice/],
    ["credentials in an entry", ["https://u:p@a"], "controlPlaneUrl[0]", /credentials/],
    ["too many", Array.from({ length: 17 }, (_, i) => `https://cp${i}`), "controlPlaneUrl", /at most 16/],
  ];
  for (const [what, value, key, reason] of bad) {
    it(`refuses ${what}, naming ${key}`, () => {
      assert.throws(
        () => parseAgentConfig({ controlPlaneUrl: value }, SRC),
        (e: unknown) => {
          assert.ok(e instanceof ConfigError, String(e));
          assert.equal(e.key, key);
          assert.match(e.reason, reason);
          return true;
        },
      );
    });
  }

  it("refuses an http:// entry without allowInsecure, even after an https:// one", () => {
    assert.throws(
      () => parseAgentConfig({ controlPlaneUrl: ["https://a", "http://b"] }, SRC),
      (e: unknown) => e instanceof ConfigError && /allowInsecure/.test(e.reason),
    );
  });
});

describe("FailoverTransport: which errors move on (fake endpoints)", () => {
  type Behaviour = "ok" | Code;
  /** Endpoints that answer or fail as scripted, recording which URL each call reached. */
  function fake(script: Record<string, Behaviour[]>) {
    const calls: string[] = [];
    const requests: Record<string, unknown[]> = {};
    const answer = (url: string) => {
      calls.push(url);
      const next = script[url]!.length > 1 ? script[url]!.shift()! : script[url]![0]!;
      if (next !== "ok") throw new ConnectError(`${url} says ${Code[next]}`, next);
    };
    const endpoints = Object.keys(script).map((url) => {
      const transport: Transport = {
        async unary(method) {
          answer(url);
          return {
            stream: false,
            service: method.parent,
            method,
            header: new Headers(),
            trailer: new Headers(),
            message: {},
          } as never;
        },
        async stream(method, _signal, _timeout, _header, input) {
          const sent: unknown[] = [];
          for await (const m of input) sent.push(m);
          requests[url] = sent;
          answer(url);
          return {
            stream: true,
            service: method.parent,
            method,
            header: new Headers(),
            trailer: new Headers(),
            message: (async function* () {
              yield {};
            })(),
          } as never;
        },
      };
      return { url, transport, close() {} };
    });
    const failover = new FailoverTransport(endpoints);
    return { calls, requests, failover, client: createClient(AgentService, failover) };
  }
  const poll = { machineId: "web-01" };

  it("UNAVAILABLE: the same call goes to the next URL, and later calls start there", async () => {
    const f = fake({ a: [Code.Unavailable], b: ["ok"] });
    await f.client.getDesiredGeneration(poll);
    await f.client.getDesiredGeneration(poll);
    assert.deepEqual(f.calls, ["a", "b", "b"]);
    assert.equal(f.failover.currentUrl, "b");
  });

  it("an answer that is an error is the control plane's: no other URL is tried", async () => {
    for (const code of [Code.NotFound, Code.PermissionDenied, Code.InvalidArgument, Code.Internal]) {
      const f = fake({ a: [code], b: ["ok"] });
      await assert.rejects(f.client.getDesiredGeneration(poll), (e) => ConnectError.from(e).code === code);
      assert.deepEqual(f.calls, ["a"], Code[code]);
      assert.equal(f.failover.currentUrl, "a");
    }
  });

  it("a deadline is the whole call's: not retried elsewhere, but the next call goes to the next URL", async () => {
    const f = fake({ a: [Code.DeadlineExceeded, "ok"], b: ["ok"] });
    await assert.rejects(
      f.client.getDesiredGeneration(poll),
      (e) => ConnectError.from(e).code === Code.DeadlineExceeded,
    );
    await f.client.getDesiredGeneration(poll);
    assert.deepEqual(f.calls, ["a", "b"]);
  });

  it("every URL down: each is tried once, the last error is the call's", async () => {
    const f = fake({ a: [Code.Unavailable], b: [Code.Unavailable], c: [Code.Unavailable] });
    await assert.rejects(f.client.getDesiredGeneration(poll), /c says Unavailable/);
    assert.deepEqual(f.calls, ["a", "b", "c"]);
  });

  it("a call the caller aborted is not passed on", async () => {
    const f = fake({ a: [Code.Unavailable], b: ["ok"] });
    const controller = new AbortController();
    controller.abort(new Error("stopping"));
    await assert.rejects(f.client.getDesiredGeneration(poll, { signal: controller.signal }));
    assert.ok(!f.calls.includes("b"));
  });

  it("a server-streaming call (Watch) is sent again, whole, to the next URL", async () => {
    const f = fake({ a: [Code.Unavailable], b: ["ok"] });
    const got = [];
    for await (const m of f.client.watch({ machineId: "web-01", tags: ["x"] })) got.push(m);
    assert.equal(got.length, 1);
    assert.deepEqual(f.calls, ["a", "b"]);
    assert.equal((f.requests["b"] as { machineId: string }[])[0]?.machineId, "web-01");
  });
});

/** A port nothing listens on: connections to it are refused. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe("failover between control-plane URLs (real control-plane processes)", () => {
  const dir = makeTempDir("nixfleet-failover-");
  let pki: Pki;
  const running: CpProcess[] = [];
  const connections: AgentConnection[] = [];

  async function controlPlane(name: string): Promise<CpProcess> {
    const cp = await startCp([
      "--listen",
      "127.0.0.1:0",
      "--db-path",
      join(dir, name, "state.db"),
      ...tlsArgs(pki),
      "--heartbeat-interval",
      "1",
      "--poll-hint",
      "1",
    ]);
    running.push(cp);
    return cp;
  }

  before(() => {
    pki = createPki(join(dir, "pki"));
  });
  after(async () => {
    for (const c of connections) c.close();
    for (const p of running) await p.stop("SIGKILL");
    removeTempDir(dir);
  });

  it("unary reports skip an unreachable URL within the call and stay on the one that answered", async () => {
    const cp = await controlPlane("unary");
    const dead = `https://127.0.0.1:${await closedPort()}`;
    const lines: Array<Record<string, unknown>> = [];
    const log = createLogger({
      name: "test",
      level: "debug",
      destination: new Writable({
        write(chunk, _e, cb) {
          for (const l of chunk.toString().split("\n").filter(Boolean)) lines.push(JSON.parse(l));
          cb();
        },
      }),
    });
    const client = pki.client("web-01");
    const connection = connectAgentService({
      baseUrls: [dead, cp.url],
      protocol: "grpc",
      tls: loadTlsMaterial({ ca: pki.ca, cert: client.cert, key: client.key }),
      pingIntervalMs: 5000,
      log,
    });
    connections.push(connection);
    const journal = Journal.open(join(dir, "unary-journal.db")).journal;
    const reporter = new Reporter({
      journal,
      client: connection.client,
      log,
      metrics: new AgentMetrics(),
      requestTimeoutMs: 10_000,
      // A retry would hide a failover that did not happen within the call: make it far away.
      backoff: { baseMs: 600_000, maxMs: 600_000 },
    });
    try {
      for (let i = 0; i < 2; i++) {
        reporter.report({
          machineId: "web-01",
          currentGeneration: GEN1,
          outcome: Outcome.UP_TO_DATE,
          message: `report ${i}`,
        });
        await reporter.flush();
        assert.equal(reporter.pending(), 0, `report ${i} delivered`);
      }
      assert.equal(connection.currentUrl(), cp.url);
      const failovers = lines.filter((l) => l["event"] === "control_plane_failover");
      assert.equal(failovers.length, 1, "the second report went straight to the URL that answered");
      assert.equal(failovers[0]!["from"], dead);
      assert.equal(failovers[0]!["to"], cp.url);
      assert.equal(lines.filter((l) => l["event"] === "report_failed").length, 0);
    } finally {
      reporter.stop();
      journal.close();
    }
  });

  it("the agent's push stream moves on when a control plane is killed, and when one shuts down (UNAVAILABLE)", async () => {
    const first = await controlPlane("first");
    const second = await controlPlane("second");
    const third = await controlPlane("third");
    const host = createHost(join(dir, "host"), "web-01");
    host.setCurrent(GEN1);
    const cert = pki.client("web-01");
    host.writeConfig({
      controlPlaneUrl: [first.url, second.url, third.url],
      dryRun: true,
      pollInterval: 1,
      retryInterval: 1,
      heartbeatInterval: 1,
      logLevel: "debug",
      tls: { caCert: pki.ca, clientCert: cert.cert, clientKey: cert.key },
    });
    const agent = host.startAgent();
    try {
      const connectedTo = (url: string) =>
        agent.find((l) => l.event === "stream_connected" && l["url"] === url).length > 0;
      const failoversFrom = (url: string) =>
        agent.find((l) => l.event === "control_plane_failover" && l["from"] === url);
      await waitFor(`the agent's stream on ${first.url}\n${agent.tail()}`, () => connectedTo(first.url));
      assert.equal(agent.find({ event: "control_plane_failover" }).length, 0);

      // A host that dies: connections refused.
      await first.stop("SIGKILL");
      await waitFor(`the agent's stream on ${second.url}\n${agent.tail()}`, () => connectedTo(second.url));
      assert.equal(failoversFrom(first.url)[0]?.["to"], second.url, agent.tail());

      // It stays there: the dead URL is not tried again while the second answers.
      const after = agent.lines.length;
      const failovers = agent.find({ event: "control_plane_failover" }).length;
      await waitFor(`two more cycles\n${agent.tail()}`, () =>
        agent.lines.slice(after).filter((l) => l.event === "next_cycle").length >= 2 ? true : undefined,
      );
      assert.equal(agent.find({ event: "control_plane_failover" }).length, failovers, agent.tail());

      // A replica shutting down (an upgrade): its streams end with UNAVAILABLE.
      await second.stop("SIGTERM");
      await waitFor(`the agent's stream on ${third.url}\n${agent.tail()}`, () => connectedTo(third.url));
      assert.equal(failoversFrom(second.url)[0]?.["to"], third.url, agent.tail());
    } finally {
      await agent.stop();
    }
  });
});
