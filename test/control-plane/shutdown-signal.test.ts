/**
 * The shutdown signal must not grow with the fleet. Connect links each call it is given the
 * signal for with one abort listener, and Node's EventTarget scans the whole listener list on
 * every add and remove; linked to every RPC, 2,000 open agent streams meant 2,000 listeners, two
 * 2,000-long scans per unary call and a MaxListenersExceeded warning. This counts the listeners
 * (no timing) with hundreds of real mTLS Session streams open, then checks graceful shutdown
 * still ends every stream — and an operator's WatchRollout — with UNAVAILABLE (or, under load, a reset).
 */
import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import { readFileSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { type Client, Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { mintClientCerts } from "../../bench/certs.js";
import { AgentService, type ControlMessage } from "../../src/gen/nixfleet/v1/agent_pb.js";
import { RolloutStrategy } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { TEST_STORE } from "../fixtures/postgres.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness } from "./harness.js";
import { Feed, Inbox, storePath, waitFor } from "./helpers.js";

const STREAMS = 750;

/**
 * What this counts lives in the HTTP layer, whatever the store; on PostgreSQL its 750 mTLS Hellos
 * only add database load (at load average 25 a chunk of 250 took over 120 s there).
 */
const skip =
  TEST_STORE === "postgres" &&
  "the HTTP layer's abort listeners do not depend on the store (NIXFLEET_TEST_STORE=postgres; it ran in the SQLite pass)";

describe("the shutdown signal with hundreds of open agent streams", { skip }, () => {
  let dir: string;
  let pki: Pki;
  before(() => {
    dir = makeTempDir("nixfleet-shutdown-signal-");
    pki = createPki(dir);
  });
  after(() => removeTempDir(dir));

  it("keeps its listener count flat as streams grow, and shutdown still ends every stream", async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => {
      if (w.name === "MaxListenersExceededWarning") warnings.push(w.message);
    };
    process.on("warning", onWarning);
    const h = await Harness.start(pki, { heartbeatIntervalSeconds: 600 });
    const managers: Http2SessionManager[] = [];
    const feeds: Feed<never>[] = [];
    try {
      const signal = h.cp.shutdownSignal;
      const listeners = () => getEventListeners(signal, "abort").length;
      const { key, certs } = mintClientCerts(pki, "many-", STREAMS);
      const clients: Client<typeof AgentService>[] = certs.map(({ cert }) => {
        const manager = new Http2SessionManager(h.url, {}, { ca: readFileSync(pki.ca), cert, key });
        managers.push(manager);
        return createClient(AgentService, createGrpcTransport({ baseUrl: h.url, sessionManager: manager }));
      });

      // A unary agent call and an operator call, with no stream open: the baseline.
      await clients[0]!.getDesiredGeneration({ machineId: certs[0]!.cn });
      await h.fleet("readonly").getFleetStatus({});
      const baseline = listeners();

      const inboxes: Inbox<ControlMessage>[] = [];
      const counts: number[] = [];
      for (let i = 0; i < STREAMS; i += 250) {
        const opened = certs.slice(i, i + 250).map(({ cn }, j) => {
          const feed = new Feed<never>();
          feeds.push(feed);
          feed.push({ message: { case: "hello", value: { machineId: cn } } } as never);
          const inbox = new Inbox(clients[i + j]!.session(feed));
          inboxes.push(inbox);
          return inbox.next(`the initial message on ${cn}`, () => true, 0, 120_000);
        });
        await Promise.all(opened);
        // A unary call while the streams are open must leave no listener behind either.
        await clients[i]!.getDesiredGeneration({ machineId: certs[i]!.cn });
        counts.push(listeners());
      }
      assert.equal(h.cp.hub.size, STREAMS);
      assert.deepEqual(
        counts,
        counts.map(() => baseline),
        `abort listeners on the shutdown signal after each 250 streams (baseline ${baseline})`,
      );
      assert.deepEqual(warnings, []);

      // An operator's WatchRollout is the one stream that ends through the signal.
      const { release } = await h.fleet("deploy").createRelease({
        entries: [{ hostname: certs[0]!.cn, storePath: storePath("many", 1) }],
        cacheUrl: "https://cache.example.org",
      });
      const { rollout } = await h.fleet("deploy").createRollout({
        releaseId: release!.id,
        target: { hosts: [certs[0]!.cn] },
        strategy: RolloutStrategy.ALL_AT_ONCE,
        healthTimeoutSeconds: 3600,
      });
      const watch = new Inbox(h.fleet("readonly").watchRollout({ rolloutId: rollout!.id }));
      await watch.next("the rollout's initial snapshot", () => true);
      assert.equal(listeners(), baseline + 1, "the open WatchRollout listens to the shutdown signal");

      await h.cp.stop();
      await Promise.all([...inboxes.map((i) => i.finished), watch.finished]);
      // Every stream ends: UNAVAILABLE from the hub, or — on a loaded machine, when the session is
      // torn down before a stream's trailers were flushed — a reset (CANCEL). Never left open.
      for (const inbox of [...inboxes, watch]) {
        const code = ConnectError.from(inbox.error).code;
        assert.ok(code === Code.Unavailable || code === Code.Canceled, String(inbox.error));
      }
      await waitFor("the shutdown's listeners to run", () => listeners() === 0);
    } finally {
      process.off("warning", onWarning);
      for (const feed of feeds) feed.end();
      for (const m of managers) m.abort();
      await h.close();
    }
  });
});
