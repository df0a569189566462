import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  parseHostPort,
  resolveServeConfig,
  type ServeFlags,
  UsageError,
} from "../../src/control-plane/config.js";

const tls: ServeFlags = { tlsCert: "/c.pem", tlsKey: "/k.pem", clientCa: "/ca.pem" };

function usage(flags: ServeFlags, env: Record<string, string> = {}): string {
  try {
    resolveServeConfig(flags, env);
  } catch (err) {
    assert.ok(err instanceof UsageError, String(err));
    return err.message;
  }
  assert.fail("accepted");
}

describe("serve configuration", () => {
  it("has the documented defaults", () => {
    const c = resolveServeConfig(tls, {});
    assert.deepEqual(c.listen, { host: "0.0.0.0", port: 8443 });
    assert.equal(c.dbPath, "/var/lib/nixfleet-cp/state.db");
    assert.equal(c.staleAfterSeconds, 300);
    assert.equal(c.pollHintSeconds, 5);
    assert.equal(c.executorTickMs, 2000);
    assert.equal(c.heartbeatIntervalSeconds, 15);
    assert.equal(c.reportRetentionHours, 168);
    assert.equal(c.allowInsecure, false);
    assert.equal(c.metricsListen, null);
    assert.deepEqual(c.tls, {
      cert: "/c.pem",
      key: "/k.pem",
      clientCa: "/ca.pem",
      ticketKeys: "/var/lib/nixfleet-cp/tls-ticket-keys",
    });
  });

  it("takes a listen backlog, 4096 unless told", () => {
    assert.equal(resolveServeConfig(tls, {}).listenBacklog, 4096);
    assert.equal(resolveServeConfig({ ...tls, listenBacklog: "1024" }, {}).listenBacklog, 1024);
    assert.equal(resolveServeConfig(tls, { NIXFLEET_CP_LISTEN_BACKLOG: "511" }).listenBacklog, 511);
    for (const bad of ["0", "many", "70000", "1.5"])
      assert.match(
        usage({ ...tls, listenBacklog: bad }),
        /^--listen-backlog: expected a whole number from 1 to 65535/,
      );
  });

  it("takes a cap on handshakes in progress, 256 unless told, 0 for none", () => {
    assert.equal(resolveServeConfig(tls, {}).maxHandshakes, 256);
    assert.equal(resolveServeConfig({ ...tls, maxHandshakes: "0" }, {}).maxHandshakes, 0);
    assert.equal(resolveServeConfig(tls, { NIXFLEET_CP_MAX_HANDSHAKES: "64" }).maxHandshakes, 64);
    for (const bad of ["-1", "lots", "100001", "2.5"])
      assert.match(
        usage({ ...tls, maxHandshakes: bad }),
        /^--max-handshakes: expected a whole number from 0 to 100000/,
      );
  });

  it("keeps the TLS ticket key next to the database unless told where", () => {
    assert.equal(
      resolveServeConfig({ ...tls, dbPath: "/srv/cp/x.db" }, {}).tls?.ticketKeys,
      "/srv/cp/tls-ticket-keys",
    );
    assert.equal(
      resolveServeConfig({ ...tls }, { NIXFLEET_CP_TLS_TICKET_KEYS: "/run/k" }).tls?.ticketKeys,
      "/run/k",
    );
    assert.equal(
      resolveServeConfig({ ...tls, tlsTicketKeys: "/flag" }, { NIXFLEET_CP_TLS_TICKET_KEYS: "/run/k" }).tls
        ?.ticketKeys,
      "/flag",
    );
    assert.match(
      usage({ allowInsecure: true, tlsTicketKeys: "/k" }),
      /^--allow-insecure: .*--tls-ticket-keys/,
    );
  });

  it("reads NIXFLEET_CP_* variables, and a flag wins over its variable", () => {
    const env = {
      NIXFLEET_CP_LISTEN: "127.0.0.1:9000",
      NIXFLEET_CP_DB_PATH: "/env.db",
      NIXFLEET_CP_TLS_CERT: "/e.pem",
      NIXFLEET_CP_TLS_KEY: "/e.key",
      NIXFLEET_CP_CLIENT_CA: "/eca.pem",
      NIXFLEET_CP_POLL_HINT: "7",
      NIXFLEET_CP_METRICS_LISTEN: ":9100",
      NIXFLEET_CP_METRICS_REQUIRE_KEY: "true",
      NIXFLEET_CP_EXECUTOR_TICK: "0.25",
    };
    const c = resolveServeConfig({ dbPath: "/flag.db" }, env);
    assert.deepEqual(c.listen, { host: "127.0.0.1", port: 9000 });
    assert.equal(c.dbPath, "/flag.db");
    assert.equal(c.tls?.cert, "/e.pem");
    assert.equal(c.pollHintSeconds, 7);
    assert.deepEqual(c.metricsListen, { host: "0.0.0.0", port: 9100 });
    assert.equal(c.metricsRequireKey, true);
    assert.equal(c.executorTickMs, 250);
  });

  it("reads durations with the shared parser: units work, a bare number keeps the flag's unit", () => {
    const c = resolveServeConfig(
      { ...tls, staleAfter: "5m", pollHint: "10s", executorTick: "250ms", heartbeatInterval: "1m" },
      { NIXFLEET_CP_REPORT_RETENTION: "7d" },
    );
    assert.equal(c.staleAfterSeconds, 300);
    assert.equal(c.pollHintSeconds, 10);
    assert.equal(c.executorTickMs, 250);
    assert.equal(c.heartbeatIntervalSeconds, 60);
    assert.equal(c.reportRetentionHours, 168, "7d is 168 hours");
    // A bare number is the documented unit: seconds, and hours for --report-retention.
    const bare = resolveServeConfig({ ...tls, staleAfter: "600", reportRetention: "48" }, {});
    assert.equal(bare.staleAfterSeconds, 600);
    assert.equal(bare.reportRetentionHours, 48);
    // Whole units only where the value is whole: 90 minutes is not a whole number of hours.
    assert.match(
      usage({ ...tls, reportRetention: "90m" }),
      /^--report-retention: expected a whole number of hours/,
    );
    assert.match(
      usage({ ...tls, staleAfter: "1500ms" }),
      /^--stale-after: expected a whole number of seconds/,
    );
    assert.match(
      usage({ ...tls, staleAfter: "31d" }),
      /^--stale-after: must be between 1 and 2592000 seconds/,
    );
  });

  it("--allow-insecure needs no TLS files and refuses them", () => {
    assert.equal(resolveServeConfig({ allowInsecure: true }, {}).tls, null);
    assert.equal(resolveServeConfig({}, { NIXFLEET_CP_ALLOW_INSECURE: "1" }).allowInsecure, true);
    // A variable set to 0 must not turn it on.
    assert.match(usage({}, { NIXFLEET_CP_ALLOW_INSECURE: "0" }), /^--tls-cert/);
    assert.match(usage({ allowInsecure: true, tlsCert: "/c" }), /^--allow-insecure: .*--tls-cert/);
    assert.match(usage({}, { NIXFLEET_CP_ALLOW_INSECURE: "maybe" }), /^--allow-insecure: .*not a boolean/);
  });

  const bad: [string, ServeFlags, RegExp][] = [
    ["no TLS at all", {}, /^--tls-cert: required/],
    ["a key without a certificate", { tlsKey: "/k", clientCa: "/ca" }, /^--tls-cert/],
    ["no client CA", { tlsCert: "/c", tlsKey: "/k" }, /^--client-ca: required/],
    ["a listen address without a port", { ...tls, listen: "localhost" }, /^--listen: expected host:port/],
    ["a port out of range", { ...tls, listen: "127.0.0.1:70000" }, /^--listen: port 70000 is out of range/],
    ["a non-numeric stale-after", { ...tls, staleAfter: "soon" }, /^--stale-after: expected a whole number/],
    ["a fractional poll hint", { ...tls, pollHint: "1.5" }, /^--poll-hint: expected a whole number/],
    ["a zero heartbeat", { ...tls, heartbeatInterval: "0" }, /^--heartbeat-interval: must be between 1/],
    [
      "a too small executor tick",
      { ...tls, executorTick: "0.001" },
      /^--executor-tick: must be between 0.05/,
    ],
    ["an unknown log level", { ...tls, logLevel: "loud" }, /^--log-level: must be one of/],
    ["an empty report retention", { ...tls, reportRetention: "" }, /^--report-retention/],
    ["a bad metrics address", { ...tls, metricsListen: "9100" }, /^--metrics-listen: expected host:port/],
  ];
  for (const [name, flags, message] of bad)
    it(`refuses ${name}, naming the flag`, () => assert.match(usage(flags), message));

  it("connection timeouts: durations from flags or NIXFLEET_CP_*_TIMEOUT, with defaults", () => {
    assert.deepEqual(resolveServeConfig(tls, {}).connectionTimeouts, {
      idleMs: 300_000,
      headerMs: 30_000,
      handshakeMs: 10_000,
    });
    const c = resolveServeConfig(
      { ...tls, idleTimeout: "2m", handshakeTimeout: "1500ms" },
      { NIXFLEET_CP_HEADER_TIMEOUT: "20", NIXFLEET_CP_IDLE_TIMEOUT: "1h" },
    );
    assert.deepEqual(c.connectionTimeouts, { idleMs: 120_000, headerMs: 20_000, handshakeMs: 1500 });
    assert.match(
      usage({ ...tls, idleTimeout: "soon" }),
      /^--idle-timeout: expected a number of seconds or a duration/,
    );
    assert.match(
      usage({ ...tls, headerTimeout: "200ms" }),
      /^--header-timeout: must be between 1 and 86400 seconds, got 0.2/,
    );
    assert.equal(
      resolveServeConfig({ ...tls, heartbeatInterval: "600" }, {}).connectionTimeouts.idleMs,
      2400_000,
      "the default idle timeout leaves room for a long heartbeat interval",
    );
    assert.match(
      usage({ ...tls, idleTimeout: "40s", heartbeatInterval: "30" }),
      /^--idle-timeout: must be longer than twice --heartbeat-interval \(30s\)/,
    );
  });

  it("--database-url (NIXFLEET_CP_DATABASE_URL) picks PostgreSQL; a wrong scheme or both databases are refused", () => {
    assert.equal(resolveServeConfig(tls, {}).databaseUrl, null);
    const url = "postgres://cp:secret@db.example:5432/nixfleet";
    assert.equal(resolveServeConfig({ ...tls, databaseUrl: url }, {}).databaseUrl, url);
    assert.equal(resolveServeConfig(tls, { NIXFLEET_CP_DATABASE_URL: url }).databaseUrl, url);
    assert.match(
      usage({ ...tls, databaseUrl: "mysql://db/x" }),
      /^--database-url: must be a postgres:\/\/ URL/,
    );
    assert.match(usage({ ...tls, databaseUrl: "db.example" }), /^--database-url: is not a URL/);
    assert.match(
      usage({ ...tls, databaseUrl: url }, { NIXFLEET_CP_DB_PATH: "/x.db" }),
      /^--database-url: and --db-path .* both given/,
    );
  });

  it("parses host:port forms, including IPv6 and port 0", () => {
    assert.deepEqual(parseHostPort("--listen", "127.0.0.1:0"), { host: "127.0.0.1", port: 0 });
    assert.deepEqual(parseHostPort("--listen", "[::1]:8443"), { host: "::1", port: 8443 });
    assert.deepEqual(parseHostPort("--listen", ":8443"), { host: "0.0.0.0", port: 8443 });
    assert.deepEqual(parseHostPort("--listen", "cp.example.org:443"), { host: "cp.example.org", port: 443 });
    assert.throws(() => parseHostPort("--listen", "::1:8443"), UsageError);
  });
});
