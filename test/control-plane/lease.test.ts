/**
 * Executor leadership decisions (src/control-plane/leader/lease.ts): who writes what to the lease
 * row, given the row and the database's clock.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { resolveServeConfig, UsageError } from "../../src/control-plane/config.js";
import {
  DEFAULT_EXECUTOR_LEASE_MS,
  decideLease,
  decideRelease,
  epochCurrent,
  type LeaseDecision,
  type LeaseRow,
} from "../../src/control-plane/leader/lease.js";

const TTL = 5000;
const row = (holder: string, epoch: number, expiresAt: number): LeaseRow => ({ holder, epoch, expiresAt });

describe("decideLease", () => {
  const cases: [string, LeaseRow, string, number, LeaseDecision][] = [
    [
      "nobody ever held it: acquire epoch 1",
      row("", 0, 0),
      "a",
      1000,
      { kind: "acquire", row: row("a", 1, 6000) },
    ],
    [
      "my live lease: renew, same epoch",
      row("a", 3, 4000),
      "a",
      2000,
      { kind: "renew", row: row("a", 3, 7000) },
    ],
    [
      "my lease expired but nobody took it: renew, same epoch (my term's writes stay valid)",
      row("a", 3, 1000),
      "a",
      9000,
      { kind: "renew", row: row("a", 3, 14000) },
    ],
    [
      "another's live lease: follow",
      row("b", 3, 4000),
      "a",
      3999,
      { kind: "follow", row: row("b", 3, 4000) },
    ],
    [
      "another's lease at its expiry instant: acquire",
      row("b", 3, 4000),
      "a",
      4000,
      { kind: "acquire", row: row("a", 4, 9000) },
    ],
    [
      "another's expired lease: acquire, next epoch",
      row("b", 3, 4000),
      "a",
      60_000,
      { kind: "acquire", row: row("a", 4, 65_000) },
    ],
    [
      "a lease given back (expired at release) is taken at once",
      row("b", 7, 100),
      "a",
      150,
      { kind: "acquire", row: row("a", 8, 5150) },
    ],
  ];
  for (const [name, current, me, now, expected] of cases) {
    it(name, () => assert.deepEqual(decideLease(current, me, now, TTL), expected));
  }

  it("a holder id must not be empty (it would look like a free lease)", () => {
    assert.throws(() => decideLease(row("", 0, 0), "", 0, TTL), /must not be empty/);
  });

  it("two replicas deciding from the same free row both want it; the row lock lets only the first write", () => {
    // The second decides after the first saved: it now sees a live lease and follows.
    const first = decideLease(row("", 0, 0), "a", 10, TTL);
    assert.equal(first.kind, "acquire");
    assert.equal(decideLease(first.row, "b", 11, TTL).kind, "follow");
  });
});

describe("decideRelease", () => {
  it("my lease: expires now, holder and epoch kept", () => {
    assert.deepEqual(decideRelease(row("a", 3, 9000), "a", 3, 2000), row("a", 3, 2000));
  });
  it("already expired: stays expired at its own time", () => {
    assert.deepEqual(decideRelease(row("a", 3, 1000), "a", 3, 2000), row("a", 3, 1000));
  });
  it("taken over (another holder, or my id at another epoch): nothing to give back", () => {
    assert.equal(decideRelease(row("b", 4, 9000), "a", 3, 2000), null);
    assert.equal(decideRelease(row("a", 4, 9000), "a", 3, 2000), null);
  });
});

describe("epochCurrent", () => {
  it("only the stored epoch passes the fence; an older or a newer one does not", () => {
    assert.equal(epochCurrent(row("a", 5, 0), 5), true);
    assert.equal(epochCurrent(row("b", 6, 0), 5), false);
    assert.equal(epochCurrent(row("a", 5, 0), 6), false);
  });
});

describe("--executor-lease (NIXFLEET_CP_EXECUTOR_LEASE)", () => {
  const tls = { tlsCert: "/c.pem", tlsKey: "/k.pem", clientCa: "/ca.pem" };
  it("defaults to a few seconds; takes seconds or a duration, the flag over the variable", () => {
    assert.equal(resolveServeConfig(tls, {}).executorLeaseMs, DEFAULT_EXECUTOR_LEASE_MS);
    assert.equal(DEFAULT_EXECUTOR_LEASE_MS, 6000);
    assert.equal(resolveServeConfig(tls, { NIXFLEET_CP_EXECUTOR_LEASE: "10" }).executorLeaseMs, 10_000);
    assert.equal(
      resolveServeConfig({ ...tls, executorLease: "1500ms" }, { NIXFLEET_CP_EXECUTOR_LEASE: "10" })
        .executorLeaseMs,
      1500,
    );
  });
  it("refuses a lease too short to renew, naming the flag", () => {
    assert.throws(
      () => resolveServeConfig({ ...tls, executorLease: "100ms" }, {}),
      (e: Error) =>
        e instanceof UsageError && /^--executor-lease: must be between 0.3 and 600 seconds/.test(e.message),
    );
    assert.throws(
      () => resolveServeConfig(tls, { NIXFLEET_CP_EXECUTOR_LEASE: "soon" }),
      (e: Error) => e instanceof UsageError && /^--executor-lease: expected a number/.test(e.message),
    );
  });
});
