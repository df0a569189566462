/**
 * Small pure pieces: output trimming, the systemd-run argv, unit names, status files, the
 * outbox's supersede rule, metrics bookkeeping, and the version constant.
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ACTIVATION_WRAPPER, readStatusFile, systemdRunArgv, unitName } from "../../src/agent/activation.js";
import type { OutboxItem } from "../../src/agent/journal/journal.js";
import { AgentMetrics } from "../../src/agent/metrics.js";
import { classifyFetchFailure } from "../../src/agent/nix.js";
import { formatSeconds, trimOutput, truncateUtf8 } from "../../src/agent/text.js";
import { selectDeliverable } from "../../src/agent/transport/reporter.js";
import { AGENT_VERSION } from "../../src/agent/version.js";
import { tempDir } from "../fixtures/tmp.js";

describe("output trimming", () => {
  it("puts error: lines first, keeps the tail, strips escapes, stays within the budget", () => {
    const noise = Array.from({ length: 200 }, (_, i) => `copying path ${i}`).join("\n");
    const text = `\u001b[31;1merror:\u001b[0m cannot add path '/nix/store/x' because it lacks a valid signature\n${noise}\n`;
    const out = trimOutput(text, 300);
    assert.ok(out.startsWith("error: cannot add path"), out);
    assert.ok(out.includes("copying path 199"), "newest context kept");
    assert.ok(!out.includes("copying path 0\n"), "oldest context dropped");
    assert.ok(!out.includes("\u001b"), "no escapes");
    assert.ok(Buffer.byteLength(out) <= 300);
  });

  it("returns empty for blank output and cuts multi-byte text on a character boundary", () => {
    assert.equal(trimOutput("\n  \n"), "");
    const cut = truncateUtf8("ä".repeat(100), 51);
    assert.ok(Buffer.byteLength(cut) <= 51);
    assert.ok(!cut.includes("\uFFFD"));
    assert.ok(cut.endsWith("[truncated]"));
    assert.equal(truncateUtf8("short", 10), "short");
  });

  it("formats durations for messages", () => {
    assert.equal(formatSeconds(0.25), "250 ms");
    assert.equal(formatSeconds(5), "5 s");
    assert.equal(formatSeconds(600), "10 min");
    assert.equal(formatSeconds(125), "2 min 5 s");
  });

  it("classifies nix copy failures", () => {
    assert.equal(
      classifyFetchFailure("error: cannot add path '/nix/store/x' because it lacks a valid signature"),
      "signature",
    );
    assert.equal(
      classifyFetchFailure(
        "error: path '/nix/store/x' is required, but there is no substituter that can build it",
      ),
      "missing",
    );
    assert.equal(
      classifyFetchFailure(
        "error: unable to download 'http://127.0.0.1:9/nix-cache-info': Couldn't connect to server (7)",
      ),
      "unreachable",
    );
    assert.equal(classifyFetchFailure("error: something odd"), "other");
  });
});

describe("activation argv and files", () => {
  it("builds the systemd-run argv: unique unit, --collect, no shell interpolation of the path", () => {
    const path = "/nix/store/0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01";
    const argv = systemdRunArgv("nixfleet-switch-d1", path, "/var/lib/nixfleet/activations/d1-switch.status");
    assert.equal(argv[0], "systemd-run");
    assert.ok(argv.includes("--unit=nixfleet-switch-d1"));
    assert.ok(argv.includes("--collect"), "the unit is unloaded even after a failure (v0.1 left it loaded)");
    assert.ok(argv.includes("--service-type=exec"));
    assert.ok(argv.includes("--no-ask-password"));
    const sep = argv.indexOf("--");
    assert.deepEqual(argv.slice(sep + 1), [
      "/bin/sh",
      "-c",
      ACTIVATION_WRAPPER,
      "nixfleet-activate",
      path,
      "/var/lib/nixfleet/activations/d1-switch.status",
      "switch",
    ]);
    // The path, the status file and the verb are positional parameters, never spliced into the script.
    assert.ok(!ACTIVATION_WRAPPER.includes(path));
    assert.match(ACTIVATION_WRAPPER, /"\$1\/bin\/switch-to-configuration" "\$3"/);
    const test = systemdRunArgv("nixfleet-switch-d1", path, "/s", "test");
    assert.equal(test.at(-1), "test", "the confirm window's activation runs `test`");
    assert.ok(test.includes("--description=nixfleet: switch-to-configuration test"));
  });

  it("names units after the deployment (unique per deployment and role)", () => {
    assert.equal(unitName("6f1c", "switch"), "nixfleet-switch-6f1c");
    assert.equal(unitName("6f1c", "rollback-1"), "nixfleet-switch-6f1c-rollback-1");
    assert.notEqual(unitName("6f1c", "rollback-1"), unitName("6f1c", "rollback-2"));
    assert.match(unitName("a b/c", "switch"), /^nixfleet-switch-/);
  });

  it("reads status files, ignoring half-written ones", (t) => {
    const dir = tempDir(t);
    const f = join(dir, "s");
    assert.equal(readStatusFile(f), undefined);
    writeFileSync(f, "");
    assert.equal(readStatusFile(f), undefined);
    writeFileSync(f, "4");
    assert.equal(readStatusFile(f), undefined, "no newline yet: still being written");
    writeFileSync(f, "4\n");
    assert.equal(readStatusFile(f), 4);
    writeFileSync(f, "137\n");
    assert.equal(readStatusFile(f), 137);
    writeFileSync(f, "x\n");
    assert.equal(readStatusFile(f), undefined);
  });
});

describe("outbox supersede rule", () => {
  const item = (
    id: number,
    kind: "report" | "health",
    outcome: string,
    cls: OutboxItem["class"],
    deploymentId = "",
  ): OutboxItem => ({
    id,
    kind,
    outcome,
    deploymentId,
    payload: new Uint8Array(),
    createdAt: id,
    attempts: 0,
    class: cls,
  });
  it("drops steady reports and periodic health that newer items make obsolete, keeps outcomes", () => {
    const items = [
      item(1, "report", "UP_TO_DATE", "status"),
      item(2, "health", "periodic", "health"),
      item(3, "report", "APPLYING", "outcome", "d1"),
      item(4, "report", "ROLLED_BACK", "outcome", "d1"),
      item(5, "health", "post_apply", "outcome", "d1"),
      item(6, "health", "periodic", "health"),
      item(7, "report", "QUARANTINED", "status"),
    ];
    const { send, drop } = selectDeliverable(items);
    assert.deepEqual(
      send.map((i) => i.id),
      [4, 5, 6, 7],
    );
    assert.deepEqual(
      drop.map((i) => i.id),
      [1, 2, 3],
    );
  });
  it("keeps the last of everything", () => {
    const { send } = selectDeliverable([item(1, "report", "UP_TO_DATE", "status")]);
    assert.equal(send.length, 1);
  });
  it("never drops a deployment's outcome, whatever is queued behind it", () => {
    const items = [
      item(1, "report", "FETCH_FAILED", "outcome", "d1"),
      item(2, "report", "SWITCH_LOCKED", "outcome", "d2"),
      item(3, "report", "APPLYING", "outcome", "d3"),
      item(4, "report", "UP_TO_DATE", "status"),
    ];
    assert.deepEqual(
      selectDeliverable(items).send.map((i) => i.id),
      [1, 2, 3, 4],
      "an APPLYING stays until its own deployment's outcome is queued",
    );
  });
});

describe("metrics bookkeeping", () => {
  it("keeps agent_state one-hot and generation_info to the current generation only", async () => {
    const m = new AgentMetrics();
    const states = async () =>
      (await m.stateGauge.get()).values.filter((v) => v.value === 1).map((v) => v.labels["state"]);
    assert.deepEqual(await states(), ["idle"]);
    m.setState("fetching");
    m.setState("applying");
    assert.deepEqual(await states(), ["applying"]);
    m.setGeneration("/nix/store/a");
    m.setGeneration("/nix/store/b");
    const gens = (await m.generationInfo.get()).values.map((v) => v.labels["generation"]);
    assert.deepEqual(gens, ["/nix/store/b"]);
    m.setGeneration(null);
    assert.equal((await m.generationInfo.get()).values.length, 0);
    const text = await m.text();
    for (const name of [
      "nixfleet_agent_state",
      "nixfleet_agent_poll_duration_seconds",
      "nixfleet_agent_last_poll_timestamp_seconds",
      "nixfleet_agent_health_check_duration_seconds",
      "nixfleet_agent_health_check_status",
      "nixfleet_agent_generation_info",
      "nixfleet_agent_deploys_total",
      "nixfleet_agent_phase_duration_seconds",
      "nixfleet_agent_rollbacks_total",
      "nixfleet_agent_session_connected",
      "nixfleet_agent_quarantined_paths",
      "nixfleet_agent_last_successful_deploy_timestamp_seconds",
      "nixfleet_agent_rollback_failed",
    ]) {
      assert.ok(text.includes(`# TYPE ${name} `), `${name} is exported`);
    }
  });
});

describe("version", () => {
  it("matches package.json", () => {
    const pkg = JSON.parse(readFileSync(join(import.meta.dirname, "../../package.json"), "utf8")) as {
      version: string;
    };
    assert.equal(AGENT_VERSION, pkg.version);
  });
});
