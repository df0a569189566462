/**
 * The executor's order of work when it starts a batch: the desired generations are pushed as
 * soon as the start commits, the event loop turns (node:http2 writes queued frames to the
 * sockets then) before the gate reads anything, and the rollout is not read again after the
 * start — the start's own record is used. A real SQLite store, counted through a proxy.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { createLogger } from "../../src/common/logger.js";
import { InProcessBus } from "../../src/control-plane/cluster/bus.js";
import { RolloutExecutor } from "../../src/control-plane/rollouts/executor.js";
import { RolloutNotifier } from "../../src/control-plane/rollouts/notifier.js";
import type { FleetStore } from "../../src/control-plane/store/repository.js";
import { SqliteFleetStore } from "../../src/control-plane/store/sqlite-store.js";
import { tempDir } from "../fixtures/tmp.js";
import { storePath } from "./helpers.js";

describe("executor: push before the gate", () => {
  it("pushes a started batch, lets the event loop turn, then evaluates the gate without re-reading the rollout", async (t) => {
    const { store } = await SqliteFleetStore.open({ path: join(tempDir(t), "state.db") });
    t.after(() => store.close());
    const ids = ["a", "b", "c"];
    for (const id of ids) await store.registerMachine({ id, tags: ["web"], lifecycle: null }, "x", 1);
    await store.createRelease(
      {
        id: "rel-1",
        entries: ids.map((id) => ({
          hostname: id,
          storePath: storePath(id, 2),
          platform: "x86_64-linux",
          tags: [],
        })),
        cacheUrl: "",
        flakeRef: "test",
        flakeRev: "",
      },
      "x",
      2,
    );
    await store.createRollout(
      {
        id: "r-1",
        releaseId: "rel-1",
        targetTags: ["web"],
        targetHosts: [],
        strategy: "all_at_once",
        batchSizes: ["100%"],
        failureThreshold: "0",
        onFailure: "pause",
        healthTimeoutSeconds: 3600,
        soakSeconds: 0,
        cacheUrl: "",
        batches: [ids.map((id) => ({ machineId: id, targetGeneration: storePath(id, 2) }))],
        note: "",
      },
      "x",
      3,
    );

    const log: string[] = [];
    let turnPending = false;
    const counted = new Proxy(store, {
      get(target, key, receiver) {
        const value = Reflect.get(target, key, receiver);
        if (typeof value !== "function") return value;
        return (...args: unknown[]) => {
          if (key === "getRollout" || key === "rolloutHead" || key === "gateEvidence" || key === "recordGate")
            log.push(String(key));
          return value.apply(target, args);
        };
      },
    }) as FleetStore;
    const bus = new InProcessBus({
      desired: (change) => {
        log.push(`push ${change.machineId}`);
        // What node:http2 does with a write: the frames go to the socket on the next turn.
        if (!turnPending) {
          turnPending = true;
          setImmediate(() => {
            turnPending = false;
            log.push("turn");
          });
        }
      },
      pollHint: () => {},
      rolloutChanged: () => {},
      kick: () => {},
      fleetChanged: () => {},
      resync: () => {},
    });
    const logger = createLogger({ name: "test", level: "error" });
    const executor = new RolloutExecutor({
      store: counted,
      clock: { now: () => 10 },
      notifier: new RolloutNotifier({ bus, logger, pollHintSeconds: 5 }),
      logger,
      tickMs: 3_600_000,
    });
    executor.lead(null);
    await executor.kick("r-1");
    await executor.stop();

    assert.deepEqual(log, [
      "rolloutHead",
      "push a",
      "push b",
      "push c",
      "turn",
      "gateEvidence",
      "recordGate",
    ]);
  });
});
