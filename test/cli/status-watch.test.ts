/**
 * `nixfleet status --watch` (the real CLI process) against a real control plane: it follows
 * WatchFleet, so a report shows up without the fleet being read again — the polling interval is
 * an hour, and the control plane counts its GetFleetStatus calls.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { Harness } from "../control-plane/harness.js";
import { storePath, waitFor } from "../control-plane/helpers.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { programArgs, REPO_ROOT } from "../fixtures/programs.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

describe("nixfleet status --watch", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  let cli: ChildProcess | null = null;
  before(async () => {
    pki = createPki(join(dir, "pki"));
    h = await Harness.start(pki);
  });
  after(async () => {
    cli?.kill("SIGKILL");
    await h.close();
    removeTempDir(dir);
  });

  const report = (id: string, outcome: Outcome) =>
    h
      .agent(id)
      .report({ machineId: id, currentGeneration: storePath(`sys-${id}`, 1), outcome, tags: ["cw"] });

  it("prints the fleet, then again after a report, from the stream", async () => {
    await report("cw-01", Outcome.UP_TO_DATE);
    await report("cw-02", Outcome.UP_TO_DATE);
    let stdout = "";
    let stderr = "";
    cli = spawn(
      process.execPath,
      [
        ...programArgs("cli"),
        "--control-plane-url",
        h.url,
        "--ca-cert",
        pki.ca,
        "--api-key",
        h.keys.readonly,
        "status",
        "--watch",
        "--tags",
        "cw",
        "--interval",
        "1h",
      ],
      {
        cwd: REPO_ROOT,
        env: {
          ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("NIXFLEET_"))),
          XDG_CONFIG_HOME: join(dir, "config"),
        },
      },
    );
    cli.stdout!.on("data", (c: Buffer) => {
      stdout += c.toString("utf8");
    });
    cli.stderr!.on("data", (c: Buffer) => {
      stderr += c.toString("utf8");
    });
    const why = () => `stdout:\n${stdout}\nstderr:\n${stderr}`;
    await waitFor("the first table", () => /cw-02\s+up-to-date/.test(stdout), 60_000).catch((e: Error) => {
      throw new Error(`${e.message}\n${why()}`);
    });
    assert.match(stdout, /^HOST\s+STATE/m);
    assert.match(stdout, /0\/0 hosts in sync \(2 with nothing assigned not counted\)/);

    await report("cw-02", Outcome.APPLY_FAILED);
    await waitFor("a table showing the report", () => /cw-02\s+apply-failed/.test(stdout), 60_000).catch(
      (e: Error) => {
        throw new Error(`${e.message}\n${why()}`);
      },
    );
    // One snapshot, no re-reading: the hour-long polling interval never came round, and the
    // control plane answered no GetFleetStatus.
    const counted = (await h.cp.metrics.rpcRequests.get()).values.filter((v) =>
      String(v.labels["procedure"]).endsWith("GetFleetStatus"),
    );
    assert.deepEqual(
      counted.map((v) => v.value).filter((n) => n > 0),
      [],
      "status --watch called GetFleetStatus",
    );
    cli.kill("SIGINT");
  });
});
