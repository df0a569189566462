/**
 * A helper program for group-commit.test.ts: opens the SQLite store at argv[2] and keeps sending
 * reports, 32 at a time (so they are group-committed), each with its own message; prints
 * "acked <message>" the moment a report's recordReport resolved — that is, was acknowledged.
 * The test SIGKILLs it mid-stream and checks that every acknowledged report is in the database.
 */
import { writeSync } from "node:fs";
import { SqliteFleetStore } from "../../src/control-plane/store/sqlite-store.js";

const { store } = await SqliteFleetStore.open({ path: process.argv[2]! });
writeSync(1, "ready\n");
for (let n = 0; ; ) {
  const wave = Array.from({ length: 32 }, () => {
    const message = `report-${n++}`;
    return store
      .recordReport(
        {
          machineId: `m-${n % 50}`,
          currentGeneration: "",
          desiredGeneration: "",
          desiredRevision: 0,
          outcome: 1,
          success: true,
          message,
          deploymentId: "",
          tags: null,
          agentVersion: "test",
          uptimeSeconds: 1,
          agentTime: null,
        },
        Date.now(),
      )
      .then(() => writeSync(1, `acked ${message}\n`));
  });
  // Not awaited as a whole: the next wave queues while this one commits.
  await Promise.race(wave);
}
