/**
 * A "newer" agent against today's control plane: reports carrying enum values this control plane
 * does not know (an Outcome, a HealthCheckKind) must never be dropped by the agent, and today's
 * control plane stores them (shown as UNKNOWN(n)), so they are delivered like any other.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { Writable } from "node:stream";
import { describe, it } from "node:test";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Journal } from "../../src/agent/journal/journal.js";
import { AgentMetrics } from "../../src/agent/metrics.js";
import { connectAgentService } from "../../src/agent/transport/client.js";
import { Reporter } from "../../src/agent/transport/reporter.js";
import { createLogger } from "../../src/common/logger.js";
import { loadTlsMaterial } from "../../src/common/tls.js";
import type { HealthCheckKind } from "../../src/gen/nixfleet/v1/types_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { Harness } from "../control-plane/harness.js";
import { waitFor } from "../fixtures/host.js";
import { createPki } from "../fixtures/pki.js";
import { tempDir } from "../fixtures/tmp.js";

const GEN = "/nix/store/0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-1";

describe("a newer agent's reports against today's control plane", () => {
  it("unknown enum values are kept until delivered, never dropped; the reports behind them get through", async (t) => {
    const dir = tempDir(t);
    const pki = createPki(join(dir, "pki"));
    const cert = pki.client("web-01");
    const cp = await Harness.start(pki);
    t.after(() => cp.close());
    const conn = connectAgentService({
      baseUrls: [cp.url],
      protocol: "grpc",
      tls: loadTlsMaterial({ ca: pki.ca, cert: cert.cert, key: cert.key }),
      pingIntervalMs: 5000,
    });
    t.after(() => conn.close());
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
    const { journal } = Journal.open(join(dir, "state.db"));
    const reporter = new Reporter({
      journal,
      client: conn.client,
      log,
      metrics: new AgentMetrics(),
      requestTimeoutMs: 5000,
      backoff: { baseMs: 50, maxMs: 200 },
    });
    t.after(() => {
      reporter.stop();
      journal.close();
    });
    const base = { machineId: "web-01", currentGeneration: GEN, timestamp: timestampFromMs(Date.now()) };

    reporter.report({
      ...base,
      outcome: 42 as Outcome,
      message: "an outcome from the future",
      deploymentId: "d-new",
    });
    reporter.health({
      ...base,
      results: [{ name: "future-check", kind: 9 as HealthCheckKind, passed: true, message: "ok" }],
      allPassed: true,
      postApply: true,
      deploymentId: "d-new",
    });
    reporter.report({
      ...base,
      outcome: Outcome.DEPLOYED,
      success: true,
      message: "known",
      deploymentId: "d-old",
    });

    await waitFor(
      "the known report to be delivered",
      () => !journal.outbox().some((i) => i.deploymentId === "d-old"),
    );
    // Today's control plane is forward compatible: it stores the unknown values, so every row is
    // delivered. (An older one refuses them; the reporter tests show those rows stay queued.)
    await waitFor("every unknown-valued row to be delivered", () => journal.outbox().length === 0);
    assert.deepEqual(
      lines.filter((l) => l["event"] === "report_rejected"),
      [],
      "nothing was dropped",
    );
    assert.deepEqual(
      lines.filter((l) => l["event"] === "report_refused"),
      [],
      "today's control plane refuses none of them",
    );
  });
});
