import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { readableCacheUrl } from "../../src/cli/commands/releases.js";
import { CliFailure, describeError, UsageError } from "../../src/cli/errors.js";

const URL = "https://cp.example:8443";

describe("CLI error messages", () => {
  const cases: [string, unknown, number, RegExp, RegExp | undefined][] = [
    [
      "usage",
      new UsageError('--batch-size entry 1 ("0") must be a count ≥ 1'),
      2,
      /^error: --batch-size/,
      undefined,
    ],
    [
      "operation failure with a hint",
      new CliFailure("rollout r-1 is still running", "keep following it"),
      1,
      /still running/,
      /keep following/,
    ],
    [
      "unknown key",
      new ConnectError("unknown or revoked API key", Code.Unauthenticated),
      1,
      /did not accept the API key/,
      /NIXFLEET_API_KEY/,
    ],
    [
      "missing role",
      new ConnectError(
        "API key r has role readonly; CreateRollout needs deploy or higher",
        Code.PermissionDenied,
      ),
      1,
      /permission denied: .*needs deploy/,
      /readonly < deploy < admin/,
    ],
    [
      "bad input",
      new ConnectError("release_id: not of the form rel-<uuid>", Code.InvalidArgument),
      1,
      /invalid request: release_id/,
      undefined,
    ],
    [
      "conflict",
      new ConnectError("machine web-01 is in active rollout r-1", Code.FailedPrecondition),
      1,
      /refused: machine web-01/,
      undefined,
    ],
    [
      "unreachable",
      new ConnectError("connect ECONNREFUSED 127.0.0.1:8443", Code.Unavailable),
      1,
      /cannot reach the control plane at https:\/\/cp\.example:8443/,
      /--control-plane-url/,
    ],
    [
      "untrusted server certificate",
      new ConnectError("self-signed certificate in certificate chain", Code.Internal),
      1,
      /TLS: the control plane's certificate is not trusted/,
      /--ca-cert/,
    ],
    [
      "wrong host name",
      new ConnectError(
        "Hostname/IP does not match certificate's altnames: IP: 10.0.0.1 is not in the cert's list",
        Code.Unavailable,
      ),
      1,
      /not for this address/,
      /subjectAltName/,
    ],
    [
      "client certificate required",
      new ConnectError("tlsv13 alert certificate required", Code.Unavailable),
      1,
      /refused the handshake/,
      /--client-cert/,
    ],
  ];
  for (const [label, err, exitCode, message, hint] of cases) {
    it(`${label}: exit ${exitCode}, says what and what next`, () => {
      const d = describeError(err, URL);
      assert.equal(d.exitCode, exitCode);
      assert.match(d.lines[0]!, message);
      if (hint) assert.match(d.lines[1] ?? "", new RegExp(`^hint: .*${hint.source}`));
      assert.ok(!d.lines.join("\n").includes("    at "), "never a stack trace");
    });
  }
});

describe("CLI error messages that depend on the URL", () => {
  it("http:// to a TLS port (the stream is cancelled): says it speaks TLS and gives the https URL", () => {
    const d = describeError(
      new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled),
      "http://cp.example:8443",
    );
    assert.match(d.lines[0]!, /hung up on plain HTTP/);
    assert.equal(
      d.lines[1],
      "hint: it probably speaks TLS: use https://cp.example:8443 (with --ca-cert if its CA is not in the system store)",
    );
    // Refused connections are about reachability, not TLS.
    const refused = describeError(
      new ConnectError("connect ECONNREFUSED 127.0.0.1:8443", Code.Unavailable),
      "http://cp.example:8443",
    );
    assert.match(refused.lines[0]!, /cannot reach the control plane/);
    // A plain-HTTP dev control plane's own errors keep their words.
    const own = describeError(
      new ConnectError("the database is busy; retry shortly", Code.Unavailable),
      "http://cp.example:8443",
    );
    assert.match(
      own.lines[0]!,
      /cannot reach the control plane at http:\/\/cp\.example:8443: the database is busy/,
    );
    const reset = describeError(new ConnectError("read ECONNRESET", Code.Aborted), "http://cp.example:8443");
    assert.match(reset.lines[1]!, /it probably speaks TLS/);
  });

  it("HTTP 404 under a path: the URL looks wrong, drop the path (not: upgrade the control plane)", () => {
    const d = describeError(
      new ConnectError("HTTP 404", Code.Unimplemented),
      "https://cp.example:8443/prefix",
    );
    assert.match(
      d.lines[0]!,
      /nothing at https:\/\/cp\.example:8443\/prefix answers this call .*URL looks wrong/,
    );
    assert.equal(
      d.lines[1],
      'hint: drop "/prefix": the control plane serves its API at the root, e.g. https://cp.example:8443',
    );
    assert.ok(!d.lines.join("\n").includes("upgrade"));
    const root = describeError(new ConnectError("HTTP 404", Code.Unimplemented), URL);
    assert.match(root.lines[1]!, /points at a nixfleet control plane/);
    const old = describeError(new ConnectError("method not implemented", Code.Unimplemented), URL);
    assert.match(old.lines[1]!, /upgrade the control plane/);
  });
});

describe("the cache URL a release records after --push-to", () => {
  for (const [pushTo, want] of [
    ["s3://fleet-cache?region=eu-west-1", "s3://fleet-cache?region=eu-west-1"],
    ["file:///srv/cache?secret-key=/run/keys/cache.sec", "file:///srv/cache"],
    ["s3://c?region=eu-west-1&secret-key=/k&compression=zstd", "s3://c?region=eu-west-1"],
    ["https://cache.example.org", "https://cache.example.org"],
  ] as const) {
    it(`${pushTo} → ${want}`, () => assert.equal(readableCacheUrl(pushTo), want));
  }
});
