import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { cacheUrlProblem } from "../../src/agent/cache-url.js";
import {
  blocksRevision,
  type CheckInput,
  type Desired,
  decideCheck,
  shouldSendSteadyReport,
  steadyReportKey,
} from "../../src/agent/decide.js";
import type { QuarantineEntry } from "../../src/agent/journal/journal.js";

const A = "/nix/store/0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-a";
const B = "/nix/store/1c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-b";

function desired(path: string, revision = 5n, cacheUrl = ""): Desired {
  return { path, cacheUrl, revision, rolloutId: "" };
}

function quarantined(path: string, revision: bigint): QuarantineEntry {
  return { path, revision, deploymentId: "d", outcome: "ROLLED_BACK", reason: "health", createdAt: 0 };
}

describe("check decision", () => {
  const table: Array<[string, CheckInput, string]> = [
    [
      "nothing assigned → idle",
      { desired: undefined, current: A, quarantine: undefined, deployedBefore: false },
      "idle",
    ],
    [
      "nothing assigned, no current-system → idle",
      { desired: undefined, current: null, quarantine: undefined, deployedBefore: false },
      "idle",
    ],
    [
      "desired == current → up to date",
      { desired: desired(A), current: A, quarantine: undefined, deployedBefore: false },
      "up-to-date",
    ],
    [
      "desired ≠ current → deploy",
      { desired: desired(B), current: A, quarantine: undefined, deployedBefore: false },
      "deploy",
    ],
    [
      "no current-system → deploy (preflight refuses later)",
      { desired: desired(B), current: null, quarantine: undefined, deployedBefore: false },
      "deploy",
    ],
    [
      "quarantined at the same revision → quarantined",
      { desired: desired(B, 5n), current: A, quarantine: quarantined(B, 5n), deployedBefore: false },
      "quarantined",
    ],
    [
      "quarantined at a newer revision than asked (stale assignment) → quarantined",
      { desired: desired(B, 4n), current: A, quarantine: quarantined(B, 5n), deployedBefore: false },
      "quarantined",
    ],
    [
      "newer revision → deploy, lifting the quarantine",
      { desired: desired(B, 6n), current: A, quarantine: quarantined(B, 5n), deployedBefore: false },
      "deploy",
    ],
    [
      "quarantined path that the host already runs → up to date",
      { desired: desired(A, 5n), current: A, quarantine: quarantined(A, 5n), deployedBefore: false },
      "up-to-date",
    ],
    [
      "this exact assignment was deployed, the host now runs something else → drifted (not fought)",
      { desired: desired(B, 5n), current: A, quarantine: undefined, deployedBefore: true },
      "drifted",
    ],
    [
      "deployed before and still running it → up to date",
      { desired: desired(B, 5n), current: B, quarantine: undefined, deployedBefore: true },
      "up-to-date",
    ],
    [
      "assigned again with a newer revision (deployedBefore is per revision) → deploy",
      { desired: desired(B, 6n), current: A, quarantine: undefined, deployedBefore: false },
      "deploy",
    ],
    [
      "hash prefix is not equality → deploy",
      { desired: desired(`${A}x`), current: A, quarantine: undefined, deployedBefore: false },
      "deploy",
    ],
    [
      "malformed path → invalid",
      { desired: desired("/etc/passwd"), current: A, quarantine: undefined, deployedBefore: false },
      "invalid",
    ],
    [
      "path with shell metacharacters → invalid",
      { desired: desired(`${A};rm -rf /`), current: A, quarantine: undefined, deployedBefore: false },
      "invalid",
    ],
    [
      "path traversal → invalid",
      {
        desired: desired("/nix/store/../../etc/shadow"),
        current: A,
        quarantine: undefined,
        deployedBefore: false,
      },
      "invalid",
    ],
    [
      "empty path → invalid",
      { desired: desired(""), current: A, quarantine: undefined, deployedBefore: false },
      "invalid",
    ],
    [
      "cache URL that disables signature checks → invalid",
      {
        desired: desired(B, 1n, "https://cache.example?trusted=1"),
        current: A,
        quarantine: undefined,
        deployedBefore: false,
      },
      "invalid",
    ],
    [
      "cache URL with a safe parameter → deploy",
      {
        desired: desired(B, 1n, "s3://bucket?region=eu-west-1"),
        current: A,
        quarantine: undefined,
        deployedBefore: false,
      },
      "deploy",
    ],
  ];
  for (const [name, input, kind] of table) {
    it(name, () => {
      const d = decideCheck(input);
      assert.equal(d.kind, kind);
      if (name.includes("lifting")) assert.equal(d.kind === "deploy" && d.liftQuarantine?.revision, 5n);
      if (kind === "invalid") assert.match(d.kind === "invalid" ? d.reason : "", /refused/);
    });
  }

  it("quarantine blocks revisions up to and including the failed one", () => {
    const q = quarantined(B, 7n);
    assert.equal(blocksRevision(q, 0n), true);
    assert.equal(blocksRevision(q, 7n), true);
    assert.equal(blocksRevision(q, 8n), false);
    assert.equal(blocksRevision(undefined, 1n), false);
    // uint64 revisions beyond Number.MAX_SAFE_INTEGER compare exactly.
    const big = quarantined(B, 2n ** 63n);
    assert.equal(blocksRevision(big, 2n ** 63n), true);
    assert.equal(blocksRevision(big, 2n ** 63n + 1n), false);
  });
});

describe("steady-state reports: on change, else at most every interval", () => {
  const key = steadyReportKey({ outcome: "UP_TO_DATE", desired: A, revision: 3n, current: A });
  const table: Array<[string, { key: string; sentAt: number } | undefined, string, number, boolean]> = [
    ["never sent", undefined, key, 1000, true],
    ["same key, within the interval", { key, sentAt: 0 }, key, 59_999, false],
    ["same key, interval elapsed", { key, sentAt: 0 }, key, 60_000, true],
    [
      "new revision of the same path",
      { key, sentAt: 0 },
      steadyReportKey({ outcome: "UP_TO_DATE", desired: A, revision: 4n, current: A }),
      1,
      true,
    ],
    [
      "different outcome",
      { key, sentAt: 0 },
      steadyReportKey({ outcome: "QUARANTINED", desired: A, revision: 3n, current: A }),
      1,
      true,
    ],
  ];
  for (const [name, last, k, now, expected] of table) {
    it(name, () => assert.equal(shouldSendSteadyReport(last, k, now, 60_000), expected));
  }
});

describe("cache URLs", () => {
  const table: Array<[string, boolean, boolean]> = [
    ["https://cache.nixos.org", true, true],
    ["http://127.0.0.1:5000", true, true],
    ["file:///var/cache/nix", true, true],
    ["s3://bucket?region=eu-west-1&endpoint=minio.local", true, true],
    ["https://cache.example?trusted=true", false, true],
    ["file:///x?secret-key=/etc/key", false, true],
    ["ssh://builder", false, true],
    ["https://user:pass@cache.example", false, true],
    ["gopher://x", false, false],
    ["https://cache example", false, false],
    ["", false, false],
    ["not a url", false, false],
  ];
  for (const [url, fromCp, local] of table) {
    it(`${JSON.stringify(url)}: from the control plane ${fromCp ? "ok" : "refused"}, locally ${local ? "ok" : "refused"}`, () => {
      assert.equal(cacheUrlProblem(url, { fromControlPlane: true }) === undefined, fromCp);
      assert.equal(cacheUrlProblem(url, { fromControlPlane: false }) === undefined, local);
    });
  }
});
