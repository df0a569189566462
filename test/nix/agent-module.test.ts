/**
 * services.nixfleet-agent evaluated with real Nix against the lib stub: the generated unit, the
 * rendered JSON — and that JSON fed to the agent's own loader (`parseAgentConfig`), which must
 * accept it with the same values and the documented defaults. One contract, two sides: the
 * module's option list, defaults and kinds are checked against the agent's declarations
 * (src/agent/config/options.ts), and its duration type against the agent's duration parser.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { FIELDS } from "../../src/agent/config/fields.js";
import { DECLARATIONS } from "../../src/agent/config/schema.js";
import { type AgentConfig, parseAgentConfig } from "../../src/agent/config.js";
import { parseDuration } from "../../src/common/duration.js";
import { LOG_LEVELS } from "../../src/common/logger.js";
import { evalJson, evalModules, NixEvalError, nixString, REPO, type Unit } from "./nix-eval.js";
import { loadOptionDocs, type OptionDoc } from "./options-doc.js";

interface AgentEval {
  configFile: string;
  json: string;
  unit: Unit;
}

/** The configuration of the nixfleet documentation (issue 6), verbatim. */
const DOCUMENTED_EXAMPLE = `{
  services.nixfleet-agent = {
    enable = true;
    controlPlaneUrl = "https://fleet.example.com";
    tags = ["web" "prod" "eu-west"];
    pollInterval = 60;
    healthInterval = 60;
    healthChecks = {
      systemd = [{ units = ["nginx.service" "postgresql.service"]; }];
      http = [{ url = "http://localhost:8080/health"; expectedStatus = 200; timeout = 3; interval = 5; }];
      command = [{ name = "disk-space"; command = "test $(df --output=pcent / | tail -1 | tr -d '% ') -lt 90"; timeout = 5; interval = 10; }];
    };
    metricsPort = 9101;
    metricsOpenFirewall = true;
  };
}`;

const HOST = `{ networking.hostName = "web-01"; }`;

function agentModule(body: string): string {
  return `{ services.nixfleet-agent = { enable = true; ${body} }; }`;
}

async function agent(...modules: string[]): Promise<AgentEval> {
  const result = await evalModules<AgentEval | null>("agent", { modules });
  assert.ok(result, "the agent module produced no configuration");
  return result;
}

async function assertionsOf(...modules: string[]): Promise<string[]> {
  return evalModules<string[]>("assertions", { modules });
}

/** Both sides: the rendered JSON through the agent's real loader. */
function loadRendered(rendered: AgentEval): AgentConfig {
  return parseAgentConfig(JSON.parse(rendered.json), rendered.configFile);
}

/** Nix must refuse the configuration, naming `what` in its message. */
async function assertEvalFails(modules: string[], what: RegExp, attr = "agent"): Promise<void> {
  await assert.rejects(evalModules(attr, { modules }), (err: Error) => {
    assert.ok(err instanceof NixEvalError, `expected a Nix evaluation error, got ${err}`);
    assert.match(err.stderr, what);
    return true;
  });
}

describe("services.nixfleet-agent: the documented example", () => {
  it("evaluates without failed assertions and opens the metrics port", async () => {
    assert.deepEqual(await assertionsOf(DOCUMENTED_EXAMPLE, HOST), []);
    assert.deepEqual(await evalModules("firewall", { modules: [DOCUMENTED_EXAMPLE, HOST] }), [9101]);
    assert.deepEqual(await evalModules("warnings", { modules: [DOCUMENTED_EXAMPLE, HOST] }), []);
  });

  it("renders a config the agent accepts with exactly the same values", async () => {
    const rendered = await agent(DOCUMENTED_EXAMPLE, HOST);
    const config = loadRendered(rendered);
    assert.deepEqual(config.controlPlaneUrl, ["https://fleet.example.com"]);
    assert.equal(config.machineId, "web-01", "machineId defaults to networking.hostName");
    assert.deepEqual(config.tags, ["eu-west", "prod", "web"]);
    assert.equal(config.pollInterval, 60);
    assert.equal(config.healthInterval, 60);
    assert.equal(config.retryInterval, 30);
    assert.equal(config.metricsPort, 9101);
    assert.deepEqual(config.healthChecks, {
      systemd: [{ units: ["nginx.service", "postgresql.service"], timeout: 5, interval: 10 }],
      http: [{ url: "http://localhost:8080/health", expectedStatus: 200, timeout: 3, interval: 5 }],
      command: [
        {
          name: "disk-space",
          command: "test $(df --output=pcent / | tail -1 | tr -d '% ') -lt 90",
          timeout: 5,
          interval: 10,
        },
      ],
    });
    assert.deepEqual(config.tls, { caCert: null, clientCert: null, clientKey: null });
    assert.equal(config.dbPath, "/var/lib/nixfleet/state.db");
  });

  it("generates the unit: ordering, root, restart policy, state dir, the store config", async () => {
    const { unit, configFile } = await agent(DOCUMENTED_EXAMPLE, HOST);
    assert.match(configFile, /^\/nix\/store\/[0-9a-z]+-nixfleet-agent\.json$/);
    assert.match(
      String(unit.serviceConfig["ExecStart"]),
      /^\/nix\/store\/[^ ]+-nixfleet-0\.1\.0\/bin\/nixfleet-agent --config (\S+)$/,
    );
    assert.equal(String(unit.serviceConfig["ExecStart"]).split(" --config ")[1], configFile);
    assert.deepEqual(unit.wantedBy, ["multi-user.target"]);
    assert.deepEqual(unit.wants, ["network-online.target"]);
    assert.deepEqual(unit.after, ["network-online.target", "nix-daemon.service"]);
    assert.equal(unit.serviceConfig["Restart"], "always");
    assert.equal(unit.serviceConfig["User"], "root");
    assert.equal(unit.serviceConfig["StateDirectory"], "nixfleet");
    assert.equal(unit.startLimitIntervalSec, 0, "systemd must never give up restarting the agent");
    // The tools the agent runs are on its PATH: the host's nix and systemd, flock, sh.
    for (const tool of ["nix-2", "systemd-", "util-linux-", "coreutils-", "bash-"]) {
      assert.ok(
        unit.path.some((p) => p.includes(`-${tool}`)),
        `${tool} missing from PATH ${unit.path}`,
      );
    }
    // Deliberately unsandboxed: switch-to-configuration (direct mode) inherits the unit.
    for (const key of ["ProtectSystem", "PrivateTmp", "NoNewPrivileges", "ProtectHome", "DynamicUser"]) {
      assert.equal(unit.serviceConfig[key], undefined, `${key} must not be set on the agent`);
    }
  });

  it("sizes the runtime for an idle daemon (malloc arenas, V8 workers); a host may override both", async () => {
    const { unit } = await agent(DOCUMENTED_EXAMPLE, HOST);
    assert.equal(unit.environment["MALLOC_ARENA_MAX"], "2");
    assert.equal(unit.environment["NODE_OPTIONS"], "--v8-pool-size=1");
    const overridden = await agent(
      DOCUMENTED_EXAMPLE,
      HOST,
      `{ systemd.services.nixfleet-agent.environment = { MALLOC_ARENA_MAX = "4"; NODE_OPTIONS = "--max-old-space-size=64"; }; }`,
    );
    assert.equal(overridden.unit.environment["MALLOC_ARENA_MAX"], "4");
    assert.equal(overridden.unit.environment["NODE_OPTIONS"], "--max-old-space-size=64");
  });

  it("a switch never restarts the agent mid-deploy, but a changed config still takes effect", async () => {
    const { unit, configFile } = await agent(DOCUMENTED_EXAMPLE, HOST);
    assert.equal(unit.restartIfChanged, false);
    assert.equal(unit.reloadIfChanged, true, "a changed unit is reloaded (SIGHUP), not restarted");
    assert.match(String(unit.serviceConfig["ExecReload"]), /\/bin\/kill -HUP \$MAINPID$/);
    assert.deepEqual(unit.restartTriggers, [configFile], "the config is a trigger (v0.1 had none)");
    assert.deepEqual(unit.reloadTriggers, [], "nixpkgs warns about reloadTriggers with reloadIfChanged");
    assert.equal(unit.serviceConfig["KillMode"], "mixed");
  });

  it("a change of a health check changes the config file, hence the unit", async () => {
    const a = await agent(DOCUMENTED_EXAMPLE, HOST);
    const b = await agent(
      DOCUMENTED_EXAMPLE,
      HOST,
      `{ services.nixfleet-agent.healthChecks.http = [ { url = "http://localhost:9090/ready"; } ]; }`,
    );
    assert.notEqual(a.configFile, b.configFile);
    assert.notEqual(a.unit.restartTriggers[0], b.unit.restartTriggers[0]);
    assert.deepEqual(
      loadRendered(b).healthChecks.http.map((c) => c.url),
      ["http://localhost:8080/health", "http://localhost:9090/ready"],
      "list definitions from several modules concatenate",
    );
  });
});

describe("services.nixfleet-agent: defaults are the agent's defaults", () => {
  it("a minimal configuration renders exactly what the agent assumes when keys are absent", async () => {
    const rendered = await agent(agentModule(`controlPlaneUrl = "https://cp.example:8443";`), HOST);
    const fromModule = loadRendered(rendered);
    const fromAgent = parseAgentConfig(
      { controlPlaneUrl: "https://cp.example:8443", machineId: "web-01" },
      "test",
    );
    assert.deepEqual(fromModule, fromAgent);
    // No agent option is missing from the module (paths.* exist for tests only).
    const renderedKeys = Object.keys(JSON.parse(rendered.json)).sort();
    const agentKeys = Object.keys(fromAgent)
      .filter((k) => k !== "paths")
      .sort();
    assert.deepEqual(renderedKeys, agentKeys);
  });

  it("health check suboptions default like the agent's (http 200/3/5, command 5/10, systemd 5/10)", async () => {
    const rendered = await agent(
      agentModule(`
        controlPlaneUrl = "https://cp.example";
        healthChecks.systemd = [ { units = [ "sshd.service" ]; } ];
        healthChecks.http = [ { url = "http://127.0.0.1/health"; } ];
        healthChecks.command = [ { name = "true"; command = "true"; } ];
      `),
      HOST,
    );
    const fromAgent = parseAgentConfig(
      {
        controlPlaneUrl: "https://cp.example",
        machineId: "web-01",
        healthChecks: {
          systemd: [{ units: ["sshd.service"] }],
          http: [{ url: "http://127.0.0.1/health" }],
          command: [{ name: "true", command: "true" }],
        },
      },
      "test",
    );
    assert.deepEqual(loadRendered(rendered).healthChecks, fromAgent.healthChecks);
    assert.deepEqual(fromAgent.healthChecks.http[0], {
      url: "http://127.0.0.1/health",
      expectedStatus: 200,
      timeout: 3,
      interval: 5,
    });
    assert.deepEqual(fromAgent.healthChecks.command[0], {
      name: "true",
      command: "true",
      timeout: 5,
      interval: 10,
    });
  });
});

describe("services.nixfleet-agent: edge cases", () => {
  it("no health checks: empty lists, which the agent replaces with its built-in check", async () => {
    const config = loadRendered(await agent(agentModule(`controlPlaneUrl = "https://cp";`), HOST));
    assert.deepEqual(config.healthChecks, { systemd: [], http: [], command: [] });
  });

  it("mTLS: CA, client cert and key reach the agent; an explicit machineId wins over the host name", async () => {
    const rendered = await agent(
      agentModule(`
        controlPlaneUrl = "https://fleet.internal:8443/";
        machineId = "db-01.eu";
        tls = {
          caCert = "/etc/nixfleet/ca.pem";
          clientCert = "/var/lib/nixfleet/tls/client.pem";
          clientKey = "/var/lib/nixfleet/tls/client.key";
        };
        cacheUrl = "https://cache.example.com";
        protocol = "connect-json";
      `),
      HOST,
    );
    const config = loadRendered(rendered);
    assert.equal(config.machineId, "db-01.eu");
    assert.deepEqual(config.controlPlaneUrl, ["https://fleet.internal:8443"]);
    assert.deepEqual(config.tls, {
      caCert: "/etc/nixfleet/ca.pem",
      clientCert: "/var/lib/nixfleet/tls/client.pem",
      clientKey: "/var/lib/nixfleet/tls/client.key",
    });
    assert.equal(config.cacheUrl, "https://cache.example.com");
    assert.equal(config.protocol, "connect-json");
    assert.deepEqual(
      await assertionsOf(agentModule(`controlPlaneUrl = "https://x"; tls.caCert = "/ca.pem";`)),
      [],
    );
  });

  it("insecure dev mode: http:// with allowInsecure evaluates and the agent accepts it", async () => {
    const module = agentModule(
      `controlPlaneUrl = "http://127.0.0.1:8080"; allowInsecure = true; dryRun = true;`,
    );
    assert.deepEqual(await assertionsOf(module, HOST), []);
    const config = loadRendered(await agent(module, HOST));
    assert.equal(config.allowInsecure, true);
    assert.equal(config.dryRun, true);
    assert.deepEqual(config.controlPlaneUrl, ["http://127.0.0.1:8080"]);
  });

  it("durations may be fractional or strings with units, as the agent reads them", async () => {
    const config = loadRendered(
      await agent(
        agentModule(`
          controlPlaneUrl = "https://cp";
          pollInterval = "5m"; retryInterval = 0.5; verifyTimeout = "90s"; activationTimeout = "1h";
          healthChecks.http = [ { url = "https://x/h"; timeout = "500ms"; } ];
        `),
        HOST,
      ),
    );
    assert.equal(config.pollInterval, 300);
    assert.equal(config.retryInterval, 0.5);
    assert.equal(config.verifyTimeout, 90);
    assert.equal(config.activationTimeout, 3600);
    assert.equal(config.healthChecks.http[0]?.timeout, 0.5);
  });

  it("activation = direct keeps the switch's process group alive across an agent restart", async () => {
    const { unit, json } = await agent(
      agentModule(`controlPlaneUrl = "https://cp"; activation = "direct";`),
      HOST,
    );
    assert.equal(unit.serviceConfig["KillMode"], "process");
    assert.equal(JSON.parse(json).activation, "direct");
  });

  it("extra PATH packages for command checks are appended to the unit's path", async () => {
    const { unit } = await agent(
      agentModule(`controlPlaneUrl = "https://cp";`),
      `{ pkgs, ... }: { services.nixfleet-agent.path = [ pkgs.curl ]; }`,
    );
    assert.match(unit.path[unit.path.length - 1] ?? "", /-curl-/);
  });

  it("metricsOpenFirewall off (the default) opens nothing", async () => {
    const modules = [agentModule(`controlPlaneUrl = "https://cp"; metricsPort = 9101;`)];
    assert.deepEqual(await evalModules("firewall", { modules }), []);
  });

  it("disabled: no unit, no config file, no firewall port", async () => {
    const modules = [
      `{ services.nixfleet-agent = { controlPlaneUrl = "https://cp"; metricsPort = 9101; metricsOpenFirewall = true; }; }`,
    ];
    assert.equal(await evalModules("agent", { modules }), null);
    assert.deepEqual(await evalModules("services", { modules }), []);
    assert.deepEqual(await evalModules("firewall", { modules }), []);
  });
});

describe("services.nixfleet-agent: bad configurations fail at evaluation", () => {
  it("clientCert without clientKey (and the reverse) trips the both-or-neither assertion", async () => {
    const certOnly = await assertionsOf(
      agentModule(`controlPlaneUrl = "https://cp"; tls.clientCert = "/c.pem";`),
    );
    assert.equal(certOnly.length, 1);
    assert.match(certOnly[0] ?? "", /tls\.clientCert and tls\.clientKey must be set together/);
    const keyOnly = await assertionsOf(
      agentModule(`controlPlaneUrl = "https://cp"; tls.clientKey = "/c.key";`),
    );
    assert.match(keyOnly.join("\n"), /both or neither/);
  });

  it("http:// without allowInsecure is refused, naming the URL and the way out", async () => {
    const messages = await assertionsOf(agentModule(`controlPlaneUrl = "http://cp.example";`));
    assert.equal(messages.length, 1);
    assert.match(
      messages[0] ?? "",
      /http:\/\/cp\.example is plain http:\/\/; use https:\/\/ or set allowInsecure/,
    );
  });

  it("other schemes are refused even with allowInsecure", async () => {
    const messages = await assertionsOf(agentModule(`controlPlaneUrl = "ftp://cp"; allowInsecure = true;`));
    assert.match(messages.join("\n"), /must start with https:\/\//);
  });

  it("controlPlaneUrl takes a list of replicas, rendered for the agent in order; each URL is checked", async () => {
    const config = loadRendered(
      await agent(
        agentModule(`controlPlaneUrl = [ "https://cp2.example/" "https://cp1.example:8443" ];`),
        HOST,
      ),
    );
    assert.deepEqual(config.controlPlaneUrl, ["https://cp2.example", "https://cp1.example:8443"]);
    const messages = await assertionsOf(
      agentModule(`controlPlaneUrl = [ "https://a" "http://b" "https://a" ];`),
    );
    assert.match(messages.join("\n"), /controlPlaneUrl http:\/\/b is plain http:\/\//);
    assert.match(messages.join("\n"), /lists https:\/\/a more than once/);
    assert.equal(messages.length, 2, messages.join("\n"));
  });

  it("TLS files with an http:// URL are refused (they would silently not be used)", async () => {
    const messages = await assertionsOf(
      agentModule(`controlPlaneUrl = "http://cp"; allowInsecure = true; tls.caCert = "/ca.pem";`),
    );
    assert.match(messages.join("\n"), /tls\.\* files are set but controlPlaneUrl is http:\/\//);
  });

  it("metricsOpenFirewall without a fixed metricsPort is refused", async () => {
    for (const port of ["null", "0"]) {
      const messages = await assertionsOf(
        agentModule(`controlPlaneUrl = "https://cp"; metricsOpenFirewall = true; metricsPort = ${port};`),
      );
      assert.match(
        messages.join("\n"),
        /metricsOpenFirewall needs a fixed metricsPort/,
        `metricsPort = ${port}`,
      );
    }
  });

  it("duplicate health check names are refused, as the agent would", async () => {
    const messages = await assertionsOf(
      agentModule(`
        controlPlaneUrl = "https://cp";
        healthChecks.command = [ { name = "disk"; command = "true"; } { name = "disk"; command = "false"; } ];
      `),
    );
    assert.match(messages.join("\n"), /used more than once: disk/);
  });

  it("a private key in the Nix store warns", async () => {
    const warnings = await evalModules<string[]>("warnings", {
      modules: [
        agentModule(
          `controlPlaneUrl = "https://cp"; tls.clientCert = "/c.pem"; tls.clientKey = "/nix/store/aaaa-client.key";`,
        ),
      ],
    });
    assert.match(warnings.join("\n"), /world-readable Nix store/);
  });

  it("type errors name the option: tags, machineId, metricsPort, protocol, durations, key path", async () => {
    const cases: [string, RegExp][] = [
      [`tags = [ "has space" ];`, /services\.nixfleet-agent\.tags/],
      [`machineId = "-bad";`, /services\.nixfleet-agent\.machineId/],
      [`metricsPort = 70000;`, /services\.nixfleet-agent\.metricsPort/],
      [`protocol = "http3";`, /services\.nixfleet-agent\.protocol/],
      [`pollInterval = 0;`, /services\.nixfleet-agent\.pollInterval/],
      [`retryInterval = "soon";`, /services\.nixfleet-agent\.retryInterval/],
      [`tls.clientKey = "client.key";`, /services\.nixfleet-agent\.tls\.clientKey/],
      [`healthChecks.http = [ { url = "localhost:80"; } ];`, /healthChecks\.http/],
      [`healthChecks.systemd = [ { units = [ ]; } ];`, /healthChecks\.systemd/],
      [`healthChecks.http = [ { url = "http://x"; expectedStatus = 600; } ];`, /expectedStatus/],
    ];
    for (const [body, what] of cases) {
      await assertEvalFails([agentModule(`controlPlaneUrl = "https://cp"; ${body}`), HOST], what);
    }
  });

  it("a misspelt option does not exist; a missing controlPlaneUrl is reported", async () => {
    await assertEvalFails(
      [agentModule(`controlPlaneUrl = "https://cp"; pollIntervall = 30;`)],
      /The option `services\.nixfleet-agent\.pollIntervall' does not exist/,
    );
    await assertEvalFails(
      [agentModule("")],
      /services\.nixfleet-agent\.controlPlaneUrl' is used but not defined/,
    );
  });
});

describe("services.nixfleet-agent: impermanence", () => {
  it("persists /var/lib/nixfleet when environment.persistence exists", async () => {
    const persistence = await evalModules("persistence", {
      modules: [agentModule(`controlPlaneUrl = "https://cp";`)],
      impermanence: true,
    });
    assert.deepEqual(persistence, {
      "/persist": { directories: [{ directory: "/var/lib/nixfleet", mode: "0700" }], files: [] },
    });
  });

  it("uses the host's persistent root, and can be turned off", async () => {
    const custom = await evalModules("persistence", {
      modules: [agentModule(`controlPlaneUrl = "https://cp"; persistence.path = "/nix/persist";`)],
      impermanence: true,
    });
    assert.deepEqual(Object.keys(custom as object), ["/nix/persist"]);
    const off = await evalModules("persistence", {
      modules: [agentModule(`controlPlaneUrl = "https://cp"; persistence.enable = false;`)],
      impermanence: true,
    });
    assert.deepEqual(off, {});
  });

  it("hosts without impermanence evaluate (the option is never defined there)", async () => {
    const modules = [agentModule(`controlPlaneUrl = "https://cp";`)];
    assert.equal(await evalModules("persistence", { modules }), null);
    assert.deepEqual(await evalModules("assertions", { modules }), []);
  });

  it("the guard matters: defining a missing option fails even under a false mkIf", async () => {
    // Proves the stub is strict like nixpkgs, so the optionalAttrs guard above is tested.
    await assertEvalFails(
      [
        `{ lib, ... }: { config = lib.mkIf false { environment.persistence."/persist".directories = [ "/x" ]; }; }`,
      ],
      /environment\.persistence' does not exist/,
      "assertions",
    );
  });
});

describe("services.nixfleet-agent: the module declares the agent's options", () => {
  const PREFIX = "services.nixfleet-agent.";
  /** Options of the NixOS module itself (the unit, firewall, impermanence), not of the agent. */
  const MODULE_ONLY = [
    "enable",
    "package",
    "metricsOpenFirewall",
    "path",
    "persistence.enable",
    "persistence.path",
  ];
  /** How the module shows the defaults the agent computes. */
  const DEFAULT_TEXT: Record<string, string> = { "the host name": "config.networking.hostName" };

  async function moduleOptions(): Promise<Map<string, OptionDoc>> {
    const docs = await loadOptionDocs();
    return new Map(
      docs.filter((o) => o.name.startsWith(PREFIX)).map((o) => [o.name.slice(PREFIX.length), o] as const),
    );
  }

  /** The agent's keys as module option names: check entries become `healthChecks.http.*.url`. */
  function agentOptions() {
    return DECLARATIONS.filter((d) => !d.docs.notInNixModule).flatMap((d) => [
      {
        name: d.key,
        field: d.field,
        required: d.field === undefined ? false : d.field.default === undefined,
      },
      ...Object.entries(d.docs.item ?? {}).map(([name, schema]) => {
        const field = FIELDS.get(schema as never);
        return { name: `${d.key}.*.${name}`, field, required: field?.default === undefined };
      }),
    ]);
  }

  it("has exactly the agent's options (paths.* are the agent's test sandbox), plus its own", async () => {
    const nix = await moduleOptions();
    const expected = [...agentOptions().map((o) => o.name), ...MODULE_ONLY].sort();
    assert.deepEqual([...nix.keys()].sort(), expected);
  });

  it("with the agent's defaults, and the same kind of value", async () => {
    const nix = await moduleOptions();
    const durationType = nix.get("pollInterval")?.type;
    for (const { name, field, required } of agentOptions()) {
      const o = nix.get(name);
      assert.ok(o, name);
      if (field?.defaultText !== undefined && field.defaultText !== "required") {
        assert.equal(o.defaultText, DEFAULT_TEXT[field.defaultText], `${name}: default shown as`);
      } else if (required || field?.defaultText === "required") {
        assert.equal(o.hasDefault, false, `${name} is required by the agent, so by the module`);
      } else if (field) {
        assert.deepEqual(o.default, field.default, `${name}: default`);
      }
      if (!field) continue;
      const kind = field.kind;
      if (kind === "duration") assert.equal(o.type, durationType, `${name} is a duration`);
      if (kind === "bool") assert.equal(o.type, "boolean", name);
      if (kind === "enum" || kind === "level") {
        const choices = kind === "enum" ? field.choices : LOG_LEVELS;
        assert.equal(o.type, `one of ${choices?.map((c) => JSON.stringify(c)).join(", ")}`, name);
      }
      if (kind === "port" || kind === "nullableString" || field.default === null)
        assert.match(o.type, /^null or /, `${name} may be null, as for the agent`);
      else assert.doesNotMatch(o.type, /^null or /, `${name} may not be null, as for the agent`);
    }
    assert.match(durationType ?? "", /duration/);
  });

  it("its duration type accepts only what the agent's duration parser reads", async () => {
    const samples = [
      ...["30", "1.5", "500ms", "30s", "5m", "1.5h", "2h", "1d", "2 days", "90 seconds", "10 mins", "00.5s"],
      ...["0", "0s", "0.0m", "", "s", "-1s", "1e3", "5 parsecs", "1.2.3s", " 5m", "5M", "1w", "2w"],
    ];
    const expr = `let
      lib = import ${REPO}/test/nix/lib.nix;
      ev = lib.evalModules {
        modules = [ ${REPO}/test/nix/nixos.nix ${REPO}/nix/modules/agent.nix ];
        specialArgs = { pkgs = import ${REPO}/test/nix/pkgs.nix; };
      };
    in map ev.options.services.nixfleet-agent.pollInterval.type.check [ ${samples.map(nixString).join(" ")} ]`;
    const accepted = await evalJson<boolean[]>(expr);
    const WEEK = 7 * 24 * 3600;
    for (const [i, sample] of samples.entries()) {
      const seconds = parseDuration(sample);
      const agentAccepts = seconds !== undefined && seconds > 0 && seconds <= WEEK;
      // The module may be stricter (lower-case units, no padding, no weeks), never laxer.
      if (accepted[i])
        assert.ok(agentAccepts, `the module accepts ${JSON.stringify(sample)}, the agent does not`);
    }
    // And every form the docs show evaluates.
    assert.deepEqual(accepted.slice(0, 12), Array(12).fill(true), JSON.stringify(samples.slice(0, 12)));
  });
});
