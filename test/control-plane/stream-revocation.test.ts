/**
 * FleetService streams end when their API key is revoked — however it is revoked: through this
 * process's RevokeApiKey, through another replica, or by `nixfleet-control-plane keys revoke`
 * writing straight to the database (the case here: nothing in the process hears of it). A stream
 * opened with another key goes on.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ApiKeyRole,
  FleetChangeKind,
  RolloutStrategy,
  SnapshotReason,
  type WatchFleetResponse,
  type WatchRolloutResponse,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness } from "./harness.js";
import { Inbox, storePath, waitFor } from "./helpers.js";

const initialSnapshot = (m: WatchFleetResponse) =>
  m.message.case === "snapshot" && m.message.value.last && m.message.value.reason === SnapshotReason.INITIAL;

describe("streams of a revoked API key", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  const aborts: AbortController[] = [];
  before(async () => {
    pki = createPki(join(dir, "pki"));
    h = await Harness.start(pki, { keyRecheckMs: 200 });
  });
  after(async () => {
    for (const a of aborts) a.abort();
    await h.close();
    removeTempDir(dir);
  });

  const signal = () => {
    const a = new AbortController();
    aborts.push(a);
    return a.signal;
  };
  const report = (id: string) =>
    h.agent(id).report({
      machineId: id,
      currentGeneration: storePath(id, 1),
      outcome: Outcome.UP_TO_DATE,
      tags: ["rv"],
    });

  it("end with UNAUTHENTICATED naming the key when it is revoked in the database behind the process's back; other keys' streams go on", async () => {
    await report("rv-01");
    const { release } = await h.fleet("deploy").createRelease({
      entries: [{ hostname: "rv-01", storePath: storePath("rv-01", 2) }],
    });
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: release!.id,
      target: { tags: ["rv"] },
      strategy: RolloutStrategy.ALL_AT_ONCE,
      healthTimeoutSeconds: 300,
    });
    const temp = await h.fleet("admin").createApiKey({ name: "rv-temp", role: ApiKeyRole.READONLY });

    const fleet = new Inbox<WatchFleetResponse>(h.fleet(temp.secret).watchFleet({}, { signal: signal() }));
    const progress = new Inbox<WatchRolloutResponse>(
      h.fleet(temp.secret).watchRollout({ rolloutId: rollout!.id }, { signal: signal() }),
    );
    const other = new Inbox<WatchFleetResponse>(h.fleet("readonly").watchFleet({}, { signal: signal() }));
    await fleet.next("the revoked key's snapshot", initialSnapshot);
    await progress.next("the rollout", () => true);
    await other.next("the other key's snapshot", initialSnapshot);

    // What `nixfleet-control-plane keys revoke` does: a write to the database, no RPC.
    await h.cp.store.revokeApiKey("rv-temp", null, "local:test", Date.now());

    for (const [what, inbox] of [
      ["WatchFleet", fleet],
      ["WatchRollout", progress],
    ] as const) {
      await waitFor(`${what} to end`, () => inbox.done, 60_000);
      const err = ConnectError.from(inbox.error);
      assert.equal(Code[err.code], Code[Code.Unauthenticated], `${what}: ${err.rawMessage}`);
      assert.match(err.rawMessage, /API key rv-temp was revoked/, what);
    }

    assert.equal(other.done, false, "the other key's stream is still open");
    const seen = other.messages.length;
    await report("rv-02");
    await other.next(
      "a change on the other key's stream",
      (m) =>
        m.message.case === "change" &&
        m.message.value.kind === FleetChangeKind.REGISTERED &&
        m.message.value.machineId === "rv-02",
      seen,
    );
  });

  it("a stream opened with a key revoked meanwhile is refused when it opens", async () => {
    const temp = await h.fleet("admin").createApiKey({ name: "rv-gone", role: ApiKeyRole.READONLY });
    await h.fleet("admin").revokeApiKey({ key: "rv-gone" });
    const inbox = new Inbox<WatchFleetResponse>(h.fleet(temp.secret).watchFleet({}, { signal: signal() }));
    await inbox.finished;
    assert.equal(Code[ConnectError.from(inbox.error).code], Code[Code.Unauthenticated]);
  });
});
