/**
 * Time comes from the wall clock and ordering from the store's sequence: traffic cannot move the
 * control plane's time. One agent floods its Session with heartbeats in one write; another
 * machine's health gate is unaffected (its 60 s health timeout does not fire), and the control
 * plane's time stays with the wall clock. No timing assertion: the bound is generous, and the
 * old clock drifted by more than a minute on the same flood.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { AgentMessageSchema } from "../../src/gen/nixfleet/v1/agent_pb.js";
import { MachineGateState, RolloutStatus, RolloutStrategy } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { Harness } from "./harness.js";
import { storePath, waitFor } from "./helpers.js";
import { SimAgent } from "./sim-agent.js";

const HEARTBEATS = 100_000;

function grpcFrame(message: MessageInitShape<typeof AgentMessageSchema>): Buffer {
  const body = toBinary(AgentMessageSchema, create(AgentMessageSchema, message));
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  Buffer.from(body).copy(frame, 5);
  return frame;
}

describe("the control plane's clock", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let h: Harness;
  before(async () => {
    pki = createPki(join(dir, "pki"));
    h = await Harness.start(pki, { executorTickMs: 50 });
  });
  after(async () => {
    await h.close();
    removeTempDir(dir);
  });

  it("a heartbeat flood on one Session leaves another machine's health timeout unchanged", async () => {
    const waiting = new SimAgent("gate-01", storePath("sys-gate-01", 1), ["clock"], h);
    await waiting.register();
    const { release } = await h.fleet("deploy").createRelease({
      entries: [{ hostname: waiting.id, storePath: storePath("sys-gate-01", 2) }],
      cacheUrl: "https://cache.example.org",
    });
    const { rollout } = await h.fleet("deploy").createRollout({
      releaseId: release!.id,
      target: { hosts: [waiting.id] },
      strategy: RolloutStrategy.ALL_AT_ONCE,
      healthTimeoutSeconds: 60,
    });
    const id = rollout!.id;
    const target = await waitFor("an assignment", async () => (await waiting.desired()).generation ?? null);

    // The flood: Hello, 100,000 heartbeats and a marker report, in one write on a raw gRPC stream.
    const cert = pki.client("flood-01");
    const session = http2.connect(h.url, {
      ca: readFileSync(pki.ca),
      cert: readFileSync(cert.cert),
      key: readFileSync(cert.key),
    });
    const stream = session.request({
      ":method": "POST",
      ":path": "/nixfleet.v1.AgentService/Session",
      "content-type": "application/grpc",
      te: "trailers",
    });
    stream.resume();
    const heartbeat = grpcFrame({ message: { case: "heartbeat", value: { intervalSeconds: 15 } } });
    stream.write(
      Buffer.concat([
        grpcFrame({ message: { case: "hello", value: { machineId: "flood-01" } } }),
        ...Array<Buffer>(HEARTBEATS).fill(heartbeat),
        grpcFrame({
          message: {
            case: "report",
            value: { machineId: "flood-01", outcome: Outcome.UP_TO_DATE, message: "after the flood" },
          },
        }),
      ]),
    );
    try {
      await waitFor(
        "every heartbeat handled (the marker report after them is stored)",
        async () =>
          (
            await h
              .fleet("readonly")
              .getMachine({ machineId: "flood-01" })
              .catch(() => null)
          )?.machine?.lastMessage === "after the flood",
        120_000,
      );
    } finally {
      stream.destroy();
      session.destroy();
    }

    // The control plane's time is the wall clock's, give or take scheduling.
    assert.ok(Math.abs(h.cp.clock.now() - Date.now()) < 5000, "the control plane's time is wall time");

    // A fresh piece of evidence makes the gate look again, after the flood.
    await waiting.client.report({
      machineId: waiting.id,
      currentGeneration: waiting.current,
      desiredGeneration: target.hash,
      desiredRevision: target.revision,
      outcome: Outcome.FETCH_FAILED,
      success: false,
      message: "cache unreachable",
    });
    const r = await waitFor("the gate evaluated the new report", async () => {
      const got = (await h.fleet("readonly").getRollout({ rolloutId: id })).rollout!;
      return /fetching the target generation failed/.test(got.batches[0]!.machines[0]!.reason) ? got : null;
    });
    const machine = r.batches[0]!.machines[0]!;
    assert.equal(
      MachineGateState[machine.state],
      "PENDING",
      `the 60 s health timeout has not run out: ${machine.reason}`,
    );
    assert.equal(r.status, RolloutStatus.RUNNING);
    assert.ok(
      r.batches[0]!.startedAt!.seconds * 1000n <= BigInt(Date.now()),
      "the batch did not start in the future",
    );
  });
});
