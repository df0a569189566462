import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { DECLARATIONS } from "../../src/agent/config/schema.js";
import {
  ConfigError,
  DEFAULTS,
  loadAgentConfig,
  OPTIONS,
  parseAgentConfig,
  parseDurationString,
} from "../../src/agent/config.js";
import { tempDir } from "../fixtures/tmp.js";
import { currentReference, DOC_PATH, renderReference } from "./config-reference.js";

const SRC = "/etc/nixfleet/agent.json";
const MIN = { controlPlaneUrl: "https://cp.example:8443" };

function fails(raw: unknown, key: string, reason: RegExp, source = SRC): void {
  assert.throws(
    () => parseAgentConfig(raw, source),
    (e: unknown) => {
      assert.ok(e instanceof ConfigError, `expected ConfigError, got ${String(e)}`);
      assert.equal(e.key, key);
      assert.equal(e.source, source);
      assert.match(e.reason, reason);
      // The message an operator sees names both the key and the file.
      assert.ok(e.message.includes(key) && e.message.includes(source), e.message);
      return true;
    },
  );
}

describe("agent config: defaults", () => {
  it("fills every documented default from a minimal file", () => {
    const c = parseAgentConfig(MIN, SRC);
    assert.deepEqual(c.controlPlaneUrl, ["https://cp.example:8443"]);
    assert.equal(c.machineId, hostname());
    assert.deepEqual(c.tags, []);
    assert.equal(c.pollInterval, 60);
    assert.equal(c.retryInterval, 30);
    assert.equal(c.healthInterval, 60);
    assert.deepEqual(c.healthChecks, { systemd: [], http: [], command: [] });
    assert.equal(c.metricsPort, null);
    assert.equal(c.metricsAddress, "0.0.0.0");
    assert.equal(c.dbPath, "/var/lib/nixfleet/state.db");
    assert.deepEqual(c.tls, { caCert: null, clientCert: null, clientKey: null });
    assert.equal(c.allowInsecure, false);
    assert.equal(c.cacheUrl, null);
    assert.equal(c.dryRun, false);
    assert.equal(c.protocol, "grpc");
    assert.equal(c.verifyTimeout, 120);
    assert.equal(c.activationTimeout, 600);
    assert.equal(c.activation, "systemd-run");
    assert.equal(c.activationOrder, "confirm", "the confirm window is the default");
    assert.equal(c.fetchTimeout, 600);
    assert.equal(c.requestTimeout, 30);
    assert.equal(c.heartbeatInterval, 30);
    assert.equal(c.logLevel, "info");
    assert.deepEqual(c.paths, {
      currentSystem: "/run/current-system",
      systemProfile: "/nix/var/nix/profiles/system",
      switchLock: "/run/nixos/switch-to-configuration.lock",
      bootId: "/proc/sys/kernel/random/boot_id",
    });
  });

  it("defaults check fields: http {expectedStatus 200, timeout 3, interval 5}, command {timeout 5, interval 10}", () => {
    const c = parseAgentConfig(
      {
        ...MIN,
        healthChecks: {
          systemd: [{ units: ["nginx.service", "sshd.service"] }],
          http: [{ url: "http://127.0.0.1/health" }],
          command: [{ name: "disk", command: "test -w /" }],
        },
      },
      SRC,
    );
    assert.deepEqual(c.healthChecks.http[0], {
      url: "http://127.0.0.1/health",
      expectedStatus: 200,
      timeout: 3,
      interval: 5,
    });
    assert.deepEqual(c.healthChecks.command[0], {
      name: "disk",
      command: "test -w /",
      timeout: 5,
      interval: 10,
    });
    assert.deepEqual(c.healthChecks.systemd[0], {
      units: ["nginx.service", "sshd.service"],
      timeout: DEFAULTS.systemd.timeout,
      interval: DEFAULTS.systemd.interval,
    });
  });

  it("accepts what the NixOS module renders: nulls for unset options, every key present", () => {
    const rendered = {
      controlPlaneUrl: "https://cp:8443/",
      machineId: "web-01",
      tags: ["web", "eu", "web"],
      pollInterval: 60,
      retryInterval: 30,
      healthInterval: 60,
      healthChecks: { systemd: [], http: [], command: [] },
      metricsPort: null,
      dbPath: "/var/lib/nixfleet/state.db",
      tls: { caCert: null, clientCert: null, clientKey: null },
      allowInsecure: false,
      cacheUrl: null,
      dryRun: false,
      protocol: "grpc",
      verifyTimeout: 120,
      activationTimeout: 600,
      activation: "systemd-run",
      paths: {
        currentSystem: "/run/current-system",
        systemProfile: "/nix/var/nix/profiles/system",
        switchLock: "/run/nixos/switch-to-configuration.lock",
      },
    };
    const c = parseAgentConfig(rendered, SRC);
    assert.deepEqual(c.controlPlaneUrl, ["https://cp:8443"], "trailing slash trimmed");
    assert.deepEqual(c.tags, ["eu", "web"], "tags sorted and de-duplicated");
  });

  it("takes durations as seconds or with units", () => {
    const c = parseAgentConfig(
      { ...MIN, pollInterval: "5m", retryInterval: "500ms", healthInterval: 1.5 },
      SRC,
    );
    assert.equal(c.pollInterval, 300);
    assert.equal(c.retryInterval, 0.5);
    assert.equal(c.healthInterval, 1.5);
    for (const [text, seconds] of [
      ["30", 30],
      ["30s", 30],
      ["1.5s", 1.5],
      ["250ms", 0.25],
      ["2h", 7200],
      [" 7 s ", 7],
      // The shared parser (src/common/duration.ts) also reads days, as the CLI and control plane do.
      ["1d", 86400],
    ] as const) {
      assert.equal(parseDurationString(text), seconds, text);
    }
    for (const bad of ["", "s", "-1", "1 fortnight", "1e3", "abc", "1.2.3s"])
      assert.equal(parseDurationString(bad), undefined, bad);
  });

  it("allows http:// only with allowInsecure", () => {
    const c = parseAgentConfig({ controlPlaneUrl: "http://127.0.0.1:8080", allowInsecure: true }, SRC);
    assert.deepEqual(c.controlPlaneUrl, ["http://127.0.0.1:8080"]);
  });
});

describe("agent config: errors name the key and the file", () => {
  const table: Array<[string, unknown, string, RegExp]> = [
    ["missing controlPlaneUrl", {}, "controlPlaneUrl", /is required/],
    [
      "http without allowInsecure",
      { controlPlaneUrl: "http://cp" },
      "controlPlaneUrl",
      /plain http.*allowInsecure/,
    ],
    ["ftp URL", { controlPlaneUrl: "ftp://cp" }, "controlPlaneUrl", /https:\/\//],
    ["not a URL", { controlPlaneUrl: "cp:8443 x" }, "controlPlaneUrl", /not a URL|https/],
    ["URL with credentials", { controlPlaneUrl: "https://u:p@cp" }, "controlPlaneUrl", /credentials/],
    ["URL with query", { controlPlaneUrl: "https://cp/?x=1" }, "controlPlaneUrl", /query/],
    ["unknown top-level key", { ...MIN, pollInteval: 5 }, "pollInteval", /unknown key/],
    ["snake_case key", { ...MIN, poll_interval: 5 }, "poll_interval", /did you mean "pollInterval"/],
    ["unknown nested key", { ...MIN, tls: { ca: "/x" } }, "tls.ca", /unknown key/],
    [
      "unknown key in an http check",
      { ...MIN, healthChecks: { http: [{ url: "http://x/", expected_status: 204 }] } },
      "healthChecks.http[0].expected_status",
      /did you mean "expectedStatus"/,
    ],
    ["negative pollInterval", { ...MIN, pollInterval: -1 }, "pollInterval", /more than zero/],
    ["zero retryInterval", { ...MIN, retryInterval: 0 }, "retryInterval", /more than zero/],
    ["string pollInterval", { ...MIN, pollInterval: "soon" }, "pollInterval", /number of seconds/],
    ["huge verifyTimeout", { ...MIN, verifyTimeout: 1e9 }, "verifyTimeout", /at most/],
    ["bool as string", { ...MIN, dryRun: "yes" }, "dryRun", /true or false/],
    ["bad protocol", { ...MIN, protocol: "http3" }, "protocol", /grpc, connect, connect-json/],
    ["bad activation", { ...MIN, activation: "exec" }, "activation", /systemd-run, direct/],
    ["port out of range", { ...MIN, metricsPort: 70000 }, "metricsPort", /0 to 65535/],
    ["fractional port", { ...MIN, metricsPort: 80.5 }, "metricsPort", /integer/],
    ["relative dbPath", { ...MIN, dbPath: "state.db" }, "dbPath", /absolute/],
    [
      "relative path option",
      { ...MIN, paths: { currentSystem: "run/current-system" } },
      "paths.currentSystem",
      /absolute/,
    ],
    ["bad machine id", { ...MIN, machineId: "web 01" }, "machineId", /may contain only/],
    ["bad tag", { ...MIN, tags: ["ok", "not ok"] }, "tags[1]", /may contain only/],
    ["tags not a list", { ...MIN, tags: "web" }, "tags", /JSON array/],
    ["cert without key", { ...MIN, tls: { clientCert: "/c.pem" } }, "tls.clientKey", /give both or neither/],
    ["key without cert", { ...MIN, tls: { clientKey: "/k.pem" } }, "tls.clientCert", /give both or neither/],
    [
      "tls over http",
      { controlPlaneUrl: "http://cp", allowInsecure: true, tls: { caCert: "/ca.pem" } },
      "controlPlaneUrl",
      /TLS files/,
    ],
    ["bad cacheUrl scheme", { ...MIN, cacheUrl: "gopher://cache" }, "cacheUrl", /not allowed/],
    ["bad log level", { ...MIN, logLevel: "loud" }, "logLevel", /one of/],
    [
      "systemd check without units",
      { ...MIN, healthChecks: { systemd: [{ units: [] }] } },
      "healthChecks.systemd[0].units",
      /at least one/,
    ],
    [
      "bad unit name",
      { ...MIN, healthChecks: { systemd: [{ units: ["a b"] }] } },
      "healthChecks.systemd[0].units[0]",
      /not a systemd unit/,
    ],
    [
      "http check without URL",
      { ...MIN, healthChecks: { http: [{}] } },
      "healthChecks.http[0].url",
      /must be a string/,
    ],
    [
      "http check with file URL",
      { ...MIN, healthChecks: { http: [{ url: "file:///etc" }] } },
      "healthChecks.http[0].url",
      /http:\/\//,
    ],
    [
      "bad expectedStatus",
      { ...MIN, healthChecks: { http: [{ url: "http://x/", expectedStatus: 42 }] } },
      "healthChecks.http[0].expectedStatus",
      /100 to 599/,
    ],
    [
      "command check without name",
      { ...MIN, healthChecks: { command: [{ command: "true" }] } },
      "healthChecks.command[0].name",
      /string/,
    ],
    [
      "duplicate check names",
      {
        ...MIN,
        healthChecks: {
          command: [
            { name: "a", command: "true" },
            { name: "a", command: "false" },
          ],
        },
      },
      "healthChecks.command[1].name",
      /used twice/,
    ],
    [
      "check timeout zero",
      { ...MIN, healthChecks: { command: [{ name: "a", command: "true", timeout: 0 }] } },
      "healthChecks.command[0].timeout",
      /more than zero/,
    ],
    ["healthChecks not an object", { ...MIN, healthChecks: [] }, "healthChecks", /JSON object/],
    ["top level not an object", ["x"], "", /JSON object/],
  ];
  for (const [name, raw, key, reason] of table) {
    it(name, () => fails(raw, key, reason));
  }
});

describe("agent config: file, environment and flags", () => {
  it("reads the file, then NIXFLEET_* variables, then flags; errors name their source", (t) => {
    const dir = tempDir(t);
    const file = join(dir, "agent.json");
    writeFileSync(file, JSON.stringify({ ...MIN, machineId: "web-01", pollInterval: 10, tags: ["a"] }));
    const { config, overrides } = loadAgentConfig({
      configPath: file,
      env: { NIXFLEET_POLL_INTERVAL: "20s", NIXFLEET_TAGS: "b, c", NIXFLEET_DRY_RUN: "true" },
      flags: { pollInterval: "30", "paths.currentSystem": "/tmp/x/current" },
    });
    assert.equal(config.pollInterval, 30, "flag wins over env and file");
    assert.deepEqual(config.tags, ["b", "c"], "env wins over file");
    assert.equal(config.dryRun, true);
    assert.equal(config.machineId, "web-01");
    assert.equal(config.paths.currentSystem, "/tmp/x/current");
    assert.equal(overrides["pollInterval"], "flag --poll-interval");
    assert.equal(overrides["tags"], "environment variable NIXFLEET_TAGS");

    assert.throws(
      () => loadAgentConfig({ configPath: file, env: { NIXFLEET_RETRY_INTERVAL: "later" } }),
      (e: ConfigError) =>
        e.key === "retryInterval" && e.source === "environment variable NIXFLEET_RETRY_INTERVAL",
    );
    assert.throws(
      () => loadAgentConfig({ configPath: file, env: {}, flags: { metricsPort: "http" } }),
      (e: ConfigError) => e.key === "metricsPort" && e.source === "flag --metrics-port",
    );
    assert.throws(
      () => loadAgentConfig({ configPath: file, env: { NIXFLEET_TAGS: "ok,not ok" } }),
      (e: ConfigError) => e.key === "tags[1]" && e.source === "environment variable NIXFLEET_TAGS",
    );
    assert.throws(
      () => loadAgentConfig({ configPath: file, env: { NIXFLEET_ALLOW_INSECURE: "maybe" } }),
      (e: ConfigError) => e.key === "allowInsecure" && /true or false/.test(e.reason),
    );
  });

  it("finds the file through NIXFLEET_CONFIG, and errors name the file", (t) => {
    const dir = tempDir(t);
    const file = join(dir, "custom.json");
    writeFileSync(file, JSON.stringify({ ...MIN, pollInterval: "fast" }));
    assert.throws(
      () => loadAgentConfig({ env: { NIXFLEET_CONFIG: file } }),
      (e: ConfigError) => e.key === "pollInterval" && e.source === file,
    );
  });

  it("refuses an explicit file that is missing, unreadable JSON, or not an object", (t) => {
    const dir = tempDir(t);
    assert.throws(
      () => loadAgentConfig({ configPath: join(dir, "nope.json"), env: {} }),
      /file does not exist/,
    );
    const bad = join(dir, "bad.json");
    writeFileSync(bad, "{ nope");
    assert.throws(
      () => loadAgentConfig({ configPath: bad, env: {} }),
      (e: ConfigError) => e.source === bad && /not valid JSON/.test(e.reason),
    );
    const arr = join(dir, "arr.json");
    writeFileSync(arr, "[1]");
    assert.throws(() => loadAgentConfig({ configPath: arr, env: {} }), /must contain a JSON object/);
  });

  it("every option has a distinct flag and NIXFLEET_ variable", () => {
    const flags = new Set(OPTIONS.map((o) => o.flag));
    const envs = new Set(OPTIONS.map((o) => o.env));
    assert.equal(flags.size, OPTIONS.length);
    assert.equal(envs.size, OPTIONS.length);
    for (const o of OPTIONS) assert.match(o.env, /^NIXFLEET_[A-Z_]+$/);
  });
});

/** The value at a dotted key ("tls.caCert") of a parsed config. */
function at(config: object, key: string): unknown {
  return key.split(".").reduce<unknown>((v, part) => (v as Record<string, unknown>)[part], config);
}

/** For every option kind: what a file, a variable and a flag give, and what each must parse to. */
function samples(o: (typeof OPTIONS)[number]): {
  file: unknown;
  env: string;
  flag: string | boolean;
  parsed: [unknown, unknown, unknown];
} {
  const named: Record<string, [string, string, string]> = {
    controlPlaneUrl: ["https://file.example", "https://env.example", "https://flag.example"],
    machineId: ["from-file", "from-env", "from-flag"],
    metricsAddress: ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
    cacheUrl: ["https://file.cache", "https://env.cache", "https://flag.cache"],
  };
  const strings = named[o.key] ?? [`/file/${o.flag}`, `/env/${o.flag}`, `/flag/${o.flag}`];
  switch (o.kind) {
    case "duration":
      return { file: 11, env: "12s", flag: "1m", parsed: [11, 12, 60] };
    case "bool":
      return { file: true, env: "no", flag: true, parsed: [true, false, true] };
    case "port":
      return { file: 1001, env: "1002", flag: "0", parsed: [1001, 1002, 0] };
    case "tags":
      return { file: ["f"], env: "e2, e1", flag: "x", parsed: [["f"], ["e1", "e2"], ["x"]] };
    case "urls":
      return {
        file: ["https://f1.example", "https://f2.example"],
        env: "https://e2.example, https://e1.example",
        flag: "https://flag.example",
        parsed: [
          ["https://f1.example", "https://f2.example"],
          ["https://e2.example", "https://e1.example"],
          ["https://flag.example"],
        ],
      };
    case "level":
      return { file: "debug", env: "warn", flag: "error", parsed: ["debug", "warn", "error"] };
    case "enum": {
      const [a, b] = o.choices as [string, string];
      return { file: b, env: a, flag: b, parsed: [b, a, b] };
    }
    default:
      return { file: strings[0], env: strings[1], flag: strings[2], parsed: strings };
  }
}

describe("agent config: precedence, for every option", () => {
  it("flag > NIXFLEET_* variable > file > default, and overrides name the winner", (t) => {
    const dir = tempDir(t);
    const fileJson: Record<string, unknown> = {};
    const env: Record<string, string> = {};
    const flags: Record<string, string | boolean> = {};
    for (const o of OPTIONS) {
      const s = samples(o);
      const parts = o.key.split(".");
      if (parts.length > 1) fileJson[parts[0]!] ??= {};
      const parent = (parts.length === 1 ? fileJson : fileJson[parts[0]!]) as Record<string, unknown>;
      parent[parts[parts.length - 1]!] = s.file;
      env[o.env] = s.env;
      flags[o.key] = s.flag;
    }
    const file = join(dir, "agent.json");
    writeFileSync(file, JSON.stringify(fileJson));
    const layers = [
      { env: {}, flags: {} },
      { env, flags: {} },
      { env, flags },
    ];
    for (const [layer, { env: e, flags: f }] of layers.entries()) {
      const { config, overrides } = loadAgentConfig({ configPath: file, env: e, flags: f });
      for (const o of OPTIONS) {
        assert.deepEqual(at(config, o.key), samples(o).parsed[layer], `${o.key} at layer ${layer}`);
        const expected = [undefined, `environment variable ${o.env}`, `flag --${o.flag}`][layer];
        assert.equal(overrides[o.key], expected, `${o.key} source at layer ${layer}`);
      }
    }
    // And with an empty file every option falls back to its declared default.
    const empty = join(dir, "empty.json");
    writeFileSync(empty, JSON.stringify({ controlPlaneUrl: "https://cp", machineId: "m" }));
    const { config } = loadAgentConfig({ configPath: empty, env: {} });
    for (const o of OPTIONS.filter((o) => !["controlPlaneUrl", "machineId"].includes(o.key))) {
      const last = o.key.slice(o.key.lastIndexOf(".") + 1);
      assert.deepEqual(at(config, o.key), DEFAULTS[last], `${o.key} default`);
    }
  });

  it("a variable or flag is validated like the file, and the error names it", (t) => {
    const dir = tempDir(t);
    const file = join(dir, "agent.json");
    writeFileSync(file, JSON.stringify(MIN));
    const cases: [Record<string, string>, Record<string, string>, string, string, RegExp][] = [
      [
        { NIXFLEET_POLL_INTERVAL: "0" },
        {},
        "pollInterval",
        "environment variable NIXFLEET_POLL_INTERVAL",
        /more than zero/,
      ],
      [{}, { fetchTimeout: "2w" }, "fetchTimeout", "flag --fetch-timeout", /at most 604800/],
      [
        { NIXFLEET_DB_PATH: "relative.db" },
        {},
        "dbPath",
        "environment variable NIXFLEET_DB_PATH",
        /absolute/,
      ],
      [{}, { "tls.clientCert": "/c.pem" }, "tls.clientKey", file, /give both/],
      [
        { NIXFLEET_PROTOCOL: "http3" },
        {},
        "protocol",
        "environment variable NIXFLEET_PROTOCOL",
        /one of grpc/,
      ],
      [{}, { logLevel: "loud" }, "logLevel", "flag --log-level", /one of fatal/],
      [
        { NIXFLEET_CACHE_URL: "gopher://x" },
        {},
        "cacheUrl",
        "environment variable NIXFLEET_CACHE_URL",
        /not allowed/,
      ],
      [{}, { controlPlaneUrl: "http://cp" }, "controlPlaneUrl", "flag --control-plane-url", /allowInsecure/],
    ];
    for (const [env, flags, key, source, reason] of cases) {
      assert.throws(
        () => loadAgentConfig({ configPath: file, env, flags }),
        (e: unknown) => {
          assert.ok(e instanceof ConfigError, String(e));
          assert.deepEqual([e.key, e.source], [key, source]);
          assert.match(e.reason, reason);
          return true;
        },
        key,
      );
    }
  });

  it("turns variable text into values: empty clears a nullable option, yes/no are booleans, units work", (t) => {
    const dir = tempDir(t);
    const file = join(dir, "agent.json");
    writeFileSync(
      file,
      JSON.stringify({ ...MIN, metricsPort: 9101, cacheUrl: "https://cache", tls: { caCert: "/ca.pem" } }),
    );
    const { config } = loadAgentConfig({
      configPath: file,
      env: {
        NIXFLEET_METRICS_PORT: "",
        NIXFLEET_CACHE_URL: "",
        NIXFLEET_CA_CERT: "",
        NIXFLEET_DRY_RUN: "yes",
        NIXFLEET_VERIFY_TIMEOUT: "2m",
        NIXFLEET_ACTIVATION_TIMEOUT: "1.5h",
      },
    });
    assert.equal(config.metricsPort, null);
    assert.equal(config.cacheUrl, null);
    assert.equal(config.tls.caCert, null);
    assert.equal(config.dryRun, true);
    assert.equal(config.verifyTimeout, 120);
    assert.equal(config.activationTimeout, 5400);
  });
});

describe("agent config: declared once", () => {
  it("docs/operations-agent.md's options reference is generated from the declarations (regenerate: node --import tsx test/agent/config-reference.ts --write)", () => {
    const section = currentReference(readFileSync(DOC_PATH, "utf8"));
    assert.ok(section, "docs/operations-agent.md lacks the generated options section markers");
    assert.equal(section, renderReference());
  });

  it("every key of the parsed config is a declaration, and every declaration a key", () => {
    const config = parseAgentConfig(MIN, SRC);
    const leaves = (obj: object, prefix: string): string[] =>
      Object.entries(obj).flatMap(([k, v]) =>
        typeof v === "object" && v !== null && !Array.isArray(v)
          ? leaves(v, `${prefix}${k}.`)
          : [`${prefix}${k}`],
      );
    assert.deepEqual(leaves(config, "").sort(), DECLARATIONS.map((d) => d.key).sort());
  });

  it("the flag and variable are the key's last segment; --help shows the default", () => {
    for (const o of OPTIONS) {
      const last = o.key.slice(o.key.lastIndexOf(".") + 1);
      assert.equal(
        o.flag.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase()),
        last,
        o.key,
      );
      assert.equal(o.env, `NIXFLEET_${o.flag.toUpperCase().replace(/-/g, "_")}`, o.key);
      assert.match(o.help, /\(default: [^)]+\)$/, o.key);
      assert.doesNotMatch(o.help, /`/, `${o.key}: --help is plain text`);
    }
    const poll = OPTIONS.find((o) => o.key === "pollInterval");
    assert.match(poll?.help ?? "", /\(default: 60 s\)/);
  });

  it("DEFAULTS are what a minimal file parses to", () => {
    const c = parseAgentConfig(MIN, SRC);
    for (const d of DECLARATIONS) {
      if (d.field?.default === undefined) continue;
      assert.deepEqual(at(c, d.key), d.field.default, d.key);
    }
  });
});
