import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { ValidationError } from "../../src/common/validation.js";
import {
  generateSecret,
  hashSecret,
  isWellFormedSecret,
  parseBearer,
  roleAtLeast,
} from "../../src/control-plane/auth/api-keys.js";
import {
  agentConnectionDecision,
  agentMachineDecision,
  type PeerIdentity,
  PLAIN_PEER,
} from "../../src/control-plane/auth/peer-identity.js";
import { FLEET_METHOD_ROLES, requiredRole } from "../../src/control-plane/auth/roles.js";
import { legacyOutcome, legacyReport } from "../../src/control-plane/http/legacy-report.js";
import { cacheUrlProblem } from "../../src/control-plane/input-rules.js";
import {
  lifecycleAfterContact,
  lifecycleTransitionProblem,
} from "../../src/control-plane/registry/lifecycle.js";
import { diffReleases } from "../../src/control-plane/releases/diff.js";
import { decodeToken, encodeToken, pageSize } from "../../src/control-plane/services/paging.js";
import { FleetService } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { Outcome } from "../../src/gen/nixfleet/v1/types_pb.js";
import { storePath } from "./helpers.js";

describe("machine lifecycle transitions", () => {
  const allowed: [string, string][] = [
    ["pending", "active"],
    ["pending", "decommissioned"],
    ["active", "maintenance"],
    ["active", "decommissioned"],
    ["maintenance", "active"],
    ["maintenance", "decommissioned"],
  ];
  const all = ["pending", "active", "maintenance", "decommissioned"] as const;
  for (const from of all) {
    for (const to of all) {
      const ok = from === to || allowed.some(([a, b]) => a === from && b === to);
      it(`${from} → ${to} is ${ok ? "allowed" : "refused"}`, () => {
        assert.equal(lifecycleTransitionProblem(from, to) === undefined, ok);
      });
    }
  }
  it("explains a refusal", () => {
    assert.match(lifecycleTransitionProblem("decommissioned", "active")!, /terminal/);
    assert.match(
      lifecycleTransitionProblem("pending", "maintenance")!,
      /from pending it can go to active or decommissioned/,
    );
  });
  it("first contact activates a pre-registered machine and nothing else", () => {
    assert.equal(lifecycleAfterContact("pending"), "active");
    assert.equal(lifecycleAfterContact("maintenance"), "maintenance");
    assert.equal(lifecycleAfterContact("decommissioned"), "decommissioned");
  });
});

describe("API keys and roles", () => {
  it("every FleetService method has a role, and the table names no other method", () => {
    const methods = FleetService.methods.map((m) => m.name).sort();
    assert.deepEqual(Object.keys(FLEET_METHOD_ROLES).sort(), methods);
  });
  it("fails safe for an unknown method (admin)", () => assert.equal(requiredRole("SomethingNew"), "admin"));
  it("orders roles readonly < deploy < admin", () => {
    assert.ok(
      roleAtLeast("admin", "deploy") && roleAtLeast("deploy", "deploy") && roleAtLeast("deploy", "readonly"),
    );
    assert.ok(!roleAtLeast("readonly", "deploy") && !roleAtLeast("deploy", "admin"));
  });
  it("generates 256-bit nfk- secrets and hashes them with SHA-256", () => {
    const a = generateSecret();
    assert.match(a, /^nfk-[0-9a-f]{64}$/);
    assert.notEqual(a, generateSecret());
    assert.match(hashSecret(a), /^[0-9a-f]{64}$/);
    assert.notEqual(hashSecret(a), a);
  });
  it("parses bearer headers and explains what is wrong without echoing secrets", () => {
    const secret = generateSecret();
    assert.deepEqual(parseBearer(`Bearer ${secret}`), { ok: true, secret });
    assert.deepEqual(parseBearer(`bearer  ${secret} `), { ok: true, secret });
    for (const [header, reason] of [
      [null, /missing API key/],
      ["", /missing API key/],
      [`Basic ${secret}`, /malformed Authorization header/],
      [secret, /malformed Authorization header/],
      ["Bearer nfk-123", /malformed API key/],
      [`Bearer ${secret.toUpperCase()}`, /malformed API key/],
    ] as const) {
      const r = parseBearer(header);
      assert.ok(!r.ok, String(header));
      assert.match(r.reason, reason);
      assert.ok(!r.reason.includes("nfk-1"), "no secret material in the reason");
    }
    assert.ok(!isWellFormedSecret("nfk-"));
  });
});

describe("agent identity decisions", () => {
  const verified = (cn: string): PeerIdentity => ({
    transport: "tls",
    verified: true,
    commonName: cn,
    problem: null,
  });
  const unverified: PeerIdentity = {
    transport: "tls",
    verified: false,
    commonName: null,
    problem: "no client certificate was presented",
  };
  it("needs a verified certificate over TLS", () => {
    assert.deepEqual(agentConnectionDecision(verified("web-01"), false), { ok: true });
    const d = agentConnectionDecision(unverified, false);
    assert.ok(!d.ok && d.code === Code.Unauthenticated && /no client certificate/.test(d.message));
  });
  it("needs CN == machine id", () => {
    assert.deepEqual(agentMachineDecision(verified("web-01"), "web-01", false), { ok: true });
    const d = agentMachineDecision(verified("web-01"), "web-02", false);
    assert.ok(!d.ok && d.code === Code.PermissionDenied && /for machine web-01, not web-02/.test(d.message));
  });
  it("plain HTTP: refused, unless --allow-insecure (then the claim is taken)", () => {
    assert.equal(agentMachineDecision(PLAIN_PEER, "web-02", false).ok, false);
    assert.deepEqual(agentMachineDecision(PLAIN_PEER, "web-02", true), { ok: true });
    // allow-insecure does not weaken a TLS connection's rules.
    assert.equal(agentMachineDecision(verified("web-01"), "web-02", true).ok, false);
  });
});

describe("v0.1 REST report mapping", () => {
  it("maps the v0.1 agent's fixed messages to outcomes", () => {
    assert.equal(legacyOutcome(true, "up-to-date"), Outcome.UP_TO_DATE);
    assert.equal(legacyOutcome(true, "applying"), Outcome.APPLYING);
    assert.equal(legacyOutcome(true, "deployed"), Outcome.DEPLOYED);
    assert.equal(legacyOutcome(false, "rolled back: health check failed: FAIL: x"), Outcome.ROLLED_BACK);
    assert.equal(legacyOutcome(true, "dry-run: would apply"), Outcome.DRY_RUN);
    assert.equal(legacyOutcome(true, "health-check"), Outcome.UNSPECIFIED);
    assert.equal(legacyOutcome(false, "something else"), Outcome.UNSPECIFIED);
  });
  it("maps a body with health onto a report and a health report bound to current_generation", () => {
    const g = storePath("nixos-system-web-01");
    const { report, health } = legacyReport("web-01", {
      machine_id: "ignored-the-path-wins",
      current_generation: g,
      success: false,
      message: "health-check",
      timestamp: "2026-04-20T10:00:00Z",
      tags: ["web"],
      agent_version: "0.1.1",
      uptime_seconds: 42,
      unknown_field: true,
      health: {
        all_passed: false,
        timestamp: "2026-04-20T10:00:00Z",
        results: [
          { status: "pass", check_name: "sshd", duration_ms: 3 },
          { status: "fail", check_name: "nginx", duration_ms: 7, message: "inactive" },
        ],
      },
    });
    assert.equal(report.machineId, "web-01");
    assert.equal(report.currentGeneration, g);
    assert.deepEqual(report.tags, ["web"]);
    assert.equal(report.uptimeSeconds, 42);
    assert.equal(report.agentTime, Date.parse("2026-04-20T10:00:00Z"));
    assert.ok(health);
    assert.equal(health.generation, g);
    assert.deepEqual(
      health.results.map((r) => [r.name, r.passed, r.message]),
      [
        ["sshd", true, ""],
        ["nginx", false, "inactive"],
      ],
    );
  });
  it("an empty tag list does not clear tags (v0.1 behaviour)", () => {
    assert.equal(
      legacyReport("a", { current_generation: "", success: true, message: "x", tags: [] }).report.tags,
      null,
    );
  });
  it("names the bad field", () => {
    for (const [body, fieldName] of [
      [[], "body"],
      [{ success: "yes" }, "success"],
      [{ tags: "web" }, "tags"],
      [{ timestamp: "yesterday" }, "timestamp"],
      [{ uptime_seconds: -1 }, "uptime_seconds"],
      [{ health: { results: [{ status: "maybe" }] } }, "health.results[0].status"],
    ] as const) {
      assert.throws(
        () => legacyReport("a", body),
        (e: unknown) => e instanceof ValidationError && e.field === fieldName,
        JSON.stringify(body),
      );
    }
  });
});

describe("small rules", () => {
  it("diffs releases by hostname", () => {
    const e = (h: string, n: number) => ({ hostname: h, storePath: storePath(h, n), platform: "", tags: [] });
    const d = diffReleases([e("a", 1), e("b", 1), e("c", 1)], [e("b", 2), e("c", 1), e("d", 1)]);
    assert.deepEqual(
      d.added.map((x) => x.hostname),
      ["d"],
    );
    assert.deepEqual(
      d.removed.map((x) => x.hostname),
      ["a"],
    );
    assert.deepEqual(d.changed, [
      { hostname: "b", fromStorePath: storePath("b", 1), toStorePath: storePath("b", 2) },
    ]);
    assert.deepEqual(d.unchanged, ["c"]);
  });
  it("page sizes: 0 is the default, larger than the maximum is clamped", () => {
    assert.equal(pageSize(0, 20, 500), 20);
    assert.equal(pageSize(7, 20, 500), 7);
    assert.equal(pageSize(9999, 20, 500), 500);
  });
  it("page tokens round-trip and garbage is INVALID_ARGUMENT on page_token", () => {
    assert.deepEqual(decodeToken(encodeToken({ t: 5, i: "x" }), { t: "number", i: "string" }), {
      t: 5,
      i: "x",
    });
    assert.equal(decodeToken("", { a: "string" }), null);
    for (const bad of [
      "!!!",
      encodeToken({ t: "5" }),
      Buffer.from("[]").toString("base64url"),
      "x".repeat(600),
    ]) {
      assert.throws(
        () => decodeToken(bad, { t: "number" }),
        (e: unknown) => e instanceof ValidationError && e.field === "page_token",
      );
    }
  });
  it("cache URLs: URLs with a scheme, no whitespace", () => {
    for (const ok of [
      "https://cache.example.org",
      "file:///srv/cache",
      "s3://bucket?region=eu-west-1",
      "http://127.0.0.1:5000",
    ])
      assert.equal(cacheUrlProblem(ok), undefined, ok);
    for (const bad of ["cache.example.org", "https://a b", "https://x\n", "", `https://${"a".repeat(1100)}`])
      assert.ok(cacheUrlProblem(bad), JSON.stringify(bad));
  });
});
