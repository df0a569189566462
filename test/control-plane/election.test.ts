/**
 * LeaseElection (src/control-plane/leader/election.ts) against a fake lease store (a port): when
 * it starts and stops leading, and that a refused write outranks a renewal already on its way.
 */
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { createLogger } from "../../src/common/logger.js";
import { LeaseElection, type LeaseStore } from "../../src/control-plane/leader/election.js";
import type { LeaseClaim } from "../../src/control-plane/store/lease.js";
import { waitFor } from "./helpers.js";

/** Answers claims from a script: a claim result, or an error to throw; the last answer repeats. */
class ScriptedLease implements LeaseStore {
  claims = 0;
  released: { holder: string; epoch: number }[] = [];
  constructor(public answers: (LeaseClaim | Error)[]) {}
  async claimExecutorLease(): Promise<LeaseClaim> {
    const a = this.answers[Math.min(this.claims++, this.answers.length - 1)]!;
    if (a instanceof Error) throw a;
    return a;
  }
  async releaseExecutorLease(holder: string, epoch: number): Promise<boolean> {
    this.released.push({ holder, epoch });
    return true;
  }
}

const granted = (kind: "acquire" | "renew", epoch: number): LeaseClaim => ({
  kind,
  row: { holder: "me", epoch, expiresAt: 0 },
  now: 0,
});
const other = (epoch: number): LeaseClaim => ({
  kind: "follow",
  row: { holder: "them", epoch, expiresAt: 0 },
  now: 0,
});

function election(store: LeaseStore, options: { ttlMs?: number; renewMs?: number } = {}) {
  const lines: string[] = [];
  const out = new PassThrough();
  out.on("data", (c: Buffer) => lines.push(...c.toString().split("\n").filter(Boolean)));
  const events: string[] = [];
  const e = new LeaseElection({
    store,
    holderId: "me",
    ttlMs: options.ttlMs ?? 60_000,
    renewMs: options.renewMs ?? 60_000,
    logger: createLogger({ name: "t", level: "debug", destination: out }),
    onLead: (epoch) => events.push(`lead ${epoch}`),
    onFollow: () => events.push("follow"),
  });
  return { e, events, lines };
}

describe("LeaseElection", () => {
  it("leads after its first claim is granted, and says so", async () => {
    const { e, events, lines } = election(new ScriptedLease([granted("acquire", 3)]));
    await e.start();
    assert.equal(e.epoch, 3);
    assert.deepEqual(events, ["lead 3"]);
    await waitFor("the log line", () => lines.some((l) => l.includes("became executor leader (epoch 3)")));
    await e.stop();
  });

  it("follows while another holds the lease", async () => {
    const { e, events } = election(new ScriptedLease([other(5)]));
    await e.start();
    assert.equal(e.leading, false);
    assert.deepEqual(events, []);
    await e.stop();
  });

  it("stops leading when a claim finds another holder", async () => {
    const store = new ScriptedLease([granted("acquire", 1), other(2)]);
    const { e, events, lines } = election(store, { renewMs: 1 });
    await e.start();
    await waitFor("it to follow", () => !e.leading);
    assert.deepEqual(events, ["lead 1", "follow"]);
    await waitFor("the log line", () =>
      lines.some((l) => l.includes("lost executor leadership: them holds the lease (epoch 2)")),
    );
    await e.stop();
  });

  it("a refused write deposes it at once, and a renewal of that epoch still arriving does not bring it back", async () => {
    const store = new ScriptedLease([granted("acquire", 4)]);
    const { e, events } = election(store, { renewMs: 1 });
    await e.start();
    e.deposed(4);
    assert.equal(e.leading, false);
    // The store keeps answering "renew epoch 4" (a claim decided before the takeover committed).
    store.answers = [granted("renew", 4)];
    const claimsBefore = store.claims;
    await waitFor("a few more claims", () => store.claims > claimsBefore + 3);
    assert.equal(e.leading, false);
    // A new term (a later acquisition) leads again.
    store.answers = [granted("acquire", 6)];
    await waitFor("the new term", () => e.epoch === 6);
    assert.deepEqual(events, ["lead 4", "follow", "lead 6"]);
    await e.stop();
  });

  it("steps down when renewals fail for a whole lease (it cannot know who leads)", async () => {
    const store = new ScriptedLease([granted("acquire", 2), new Error("connection refused")]);
    const { e, events, lines } = election(store, { ttlMs: 50, renewMs: 10 });
    await e.start();
    assert.equal(e.epoch, 2);
    await waitFor("it to step down", () => !e.leading);
    assert.deepEqual(events, ["lead 2", "follow"]);
    assert.equal(
      lines.filter((l) => l.includes("claiming the executor lease failed")).length,
      1,
      "logged once per outage",
    );
    assert.ok(lines.some((l) => l.includes("the lease expired without a renewal")));
    await e.stop();
  });

  it("a lease that moved to a new epoch of its own ends the old term first, and the new one still expires", async () => {
    const store = new ScriptedLease([granted("acquire", 1), granted("acquire", 3)]);
    const { e, events } = election(store, { ttlMs: 200, renewMs: 5 });
    await e.start();
    await waitFor("the new term", () => e.epoch === 3);
    assert.deepEqual(events, ["lead 1", "follow", "lead 3"]);
    // Renewals now fail: the new term's deadline must still end it.
    store.answers = [new Error("connection refused")];
    await waitFor("it to step down", () => !e.leading);
    assert.deepEqual(events, ["lead 1", "follow", "lead 3", "follow"]);
    await e.stop();
  });

  it("stop() gives a held lease back, and nothing when following", async () => {
    const leading = new ScriptedLease([granted("acquire", 7)]);
    const a = election(leading);
    await a.e.start();
    await a.e.stop();
    assert.deepEqual(leading.released, [{ holder: "me", epoch: 7 }]);
    assert.equal(a.e.leading, false);
    const following = new ScriptedLease([other(1)]);
    const b = election(following);
    await b.e.start();
    await b.e.stop();
    assert.deepEqual(following.released, []);
  });
});
