/**
 * EvaluationPacer: reports ask for evaluations of their rollout; a burst costs one, and a report
 * that arrives while one runs gets another after it (the running one may have read too early).
 */
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";
import { EvaluationPacer } from "../../src/control-plane/services/evaluation-pacer.js";

function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

describe("EvaluationPacer", () => {
  // The pacer's timers do not keep the process alive (unref); the test's waiting must.
  let keepAlive: NodeJS.Timeout;
  beforeEach(() => {
    keepAlive = setInterval(() => {}, 1000);
  });
  afterEach(() => clearInterval(keepAlive));

  it("coalesces a burst of requests into one evaluation per rollout", async () => {
    const runs: string[] = [];
    const done = deferred();
    const pacer = new EvaluationPacer({
      minDelayMs: 1,
      evaluate: async (id) => {
        runs.push(id);
        if (runs.length === 2) done.resolve();
      },
    });
    for (let i = 0; i < 50; i++) {
      pacer.request("r-1");
      pacer.request("r-2");
    }
    await done.promise;
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(runs.sort(), ["r-1", "r-2"]);
    pacer.stop();
  });

  it("a request while the evaluation runs schedules exactly one more after it", async () => {
    let runs = 0;
    const first = deferred();
    const release = deferred();
    const second = deferred();
    const pacer = new EvaluationPacer({
      minDelayMs: 1,
      evaluate: async () => {
        runs++;
        if (runs === 1) {
          first.resolve();
          await release.promise;
        } else second.resolve();
      },
    });
    pacer.request("r-1");
    await first.promise;
    for (let i = 0; i < 10; i++) pacer.request("r-1");
    release.resolve();
    await second.promise;
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(runs, 2);
    pacer.stop();
  });

  it("a failing evaluation does not stop later ones", async () => {
    let runs = 0;
    const second = deferred();
    const failed = deferred();
    const pacer = new EvaluationPacer({
      minDelayMs: 1,
      evaluate: async () => {
        runs++;
        if (runs === 1) {
          setTimeout(failed.resolve, 5);
          throw new Error("the executor is not running");
        }
        second.resolve();
      },
    });
    pacer.request("r-1");
    await failed.promise;
    pacer.request("r-1");
    await second.promise;
    assert.equal(runs, 2);
    pacer.stop();
  });
});
