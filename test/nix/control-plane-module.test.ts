/**
 * services.nixfleet-control-plane evaluated with real Nix against the lib stub — and the unit's
 * exact ExecStart argv (credentials laid out as systemd would) run against the real control
 * plane, which must start and listen; the admin tool's argv must create a key in the same DB.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { parse as parsePgUrl } from "pg-connection-string";
import { DEFAULTS as CP_DEFAULTS, resolveServeConfig } from "../../src/control-plane/config.js";
import { createPki } from "../fixtures/pki.js";
import { programArgs } from "../fixtures/programs.js";
import { tempDir } from "../fixtures/tmp.js";
import { evalModules, NixEvalError, REPO, type Unit } from "./nix-eval.js";

interface ControlPlaneEval {
  unit: Unit;
  requires: string[];
  postgresql: {
    enable: boolean;
    ensureDatabases: string[];
    ensureUsers: { name: string; ensureDBOwnership: boolean }[];
  };
  user: { isSystemUser: boolean; group: string; home: string };
  adminTool: string;
}

function cpModule(body: string): string {
  return `{ services.nixfleet-control-plane = { enable = true; ${body} }; }`;
}

const TLS = `tls = { cert = "/var/lib/secrets/cp.pem"; key = "/var/lib/secrets/cp.key"; clientCa = "/var/lib/secrets/ca.pem"; };`;

async function controlPlane(...modules: string[]): Promise<ControlPlaneEval> {
  const result = await evalModules<ControlPlaneEval | null>("controlPlane", { modules });
  assert.ok(result, "the control-plane module produced no configuration");
  return result;
}

/**
 * Splits an ExecStart line as systemd does for what the module writes: C-style double-quoted
 * words (JSON string syntax) and bare words; `%%`/`$$` become `%`/`$`, `%d` the credentials dir.
 */
function splitExecStart(line: string, credentialsDir: string): string[] {
  const words = line.match(/"(?:[^"\\]|\\.)*"|\S+/g) ?? [];
  return words.map((w) => {
    const raw = w.startsWith('"') ? (JSON.parse(w) as string) : w;
    return raw.replace(/%%|\$\$|%d/g, (m) => (m === "%%" ? "%" : m === "$$" ? "$" : credentialsDir));
  });
}

/** Flag names → commander's camelCase keys, for resolveServeConfig. */
function flagsOf(argv: string[]): Record<string, string | boolean> {
  const flags: Record<string, string | boolean> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("--")) continue;
    const key = arg.slice(2).replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
    const next = argv[i + 1];
    if (next === undefined || next.startsWith("--")) flags[key] = true;
    else {
      flags[key] = next;
      i++;
    }
  }
  return flags;
}

function waitForListening(child: ChildProcess, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = "";
    let err = "";
    const timer = setTimeout(
      () => reject(new Error(`no "listening" line within ${timeoutMs} ms\n${out}\n${err}`)),
      timeoutMs,
    );
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const line = out.split("\n").find((l) => l.includes('"msg":"listening"'));
      if (line) {
        clearTimeout(timer);
        resolve(line);
      }
    });
    child.stderr!.on("data", (d: Buffer) => {
      err += d.toString();
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`control plane exited (${code ?? signal}) before listening\n${out}\n${err}`));
    });
  });
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once("exit", (code) => resolve(code)));
}

/** Runs the unit's argv with `node --import tsx src/control-plane/main.ts` for the package binary. */
async function startLikeSystemd(
  t: { after(fn: () => Promise<void> | void): void },
  unit: Unit,
  credentialsDir: string,
): Promise<{ child: ChildProcess; listening: string }> {
  const argv = splitExecStart(String(unit.serviceConfig["ExecStart"]), credentialsDir);
  assert.match(argv[0] ?? "", /\/bin\/nixfleet-control-plane$/);
  const child = spawn(process.execPath, [...programArgs("control-plane"), ...argv.slice(1)], {
    cwd: REPO,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, NIXFLEET_CP_DB_PATH: "", NIXFLEET_CP_LISTEN: "" },
  });
  t.after(async () => {
    if (child.exitCode === null) {
      child.kill("SIGKILL");
      await exited(child);
    }
  });
  const listening = await waitForListening(child, 60_000);
  return { child, listening };
}

describe("services.nixfleet-control-plane: the unit", () => {
  it("runs serve with every setting as a flag, TLS files as systemd credentials", async () => {
    const { unit } = await controlPlane(cpModule(TLS));
    const argv = splitExecStart(String(unit.serviceConfig["ExecStart"]), "/run/credentials/x");
    assert.deepEqual(argv.slice(1), [
      "serve",
      "--listen",
      "0.0.0.0:8443",
      "--db-path",
      "/var/lib/nixfleet-cp/state.db",
      "--stale-after",
      "300",
      "--poll-hint",
      "5",
      "--executor-tick",
      "2",
      "--executor-lease",
      "6",
      "--heartbeat-interval",
      "15",
      "--report-retention",
      "168",
      "--log-level",
      "info",
      "--tls-cert",
      "/run/credentials/x/tls-cert",
      "--tls-key",
      "/run/credentials/x/tls-key",
      "--client-ca",
      "/run/credentials/x/client-ca",
    ]);
    assert.deepEqual(unit.serviceConfig["LoadCredential"], [
      "tls-cert:/var/lib/secrets/cp.pem",
      "tls-key:/var/lib/secrets/cp.key",
      "client-ca:/var/lib/secrets/ca.pem",
    ]);
    assert.deepEqual(unit.after, ["network-online.target"]);
    assert.deepEqual(unit.wants, ["network-online.target"]);
    assert.deepEqual(unit.wantedBy, ["multi-user.target"]);
  });

  it("passes tls.ticketKeys as --tls-ticket-keys, read in place (re-read to rotate)", async () => {
    const { unit } = await controlPlane(
      cpModule(TLS),
      cpModule(`tls.ticketKeys = "/var/lib/secrets/nixfleet/tls-ticket-keys";`),
    );
    const argv = splitExecStart(String(unit.serviceConfig["ExecStart"]), "/creds");
    const at = argv.indexOf("--tls-ticket-keys");
    assert.ok(at > 0, "--tls-ticket-keys is passed");
    assert.equal(argv[at + 1], "/var/lib/secrets/nixfleet/tls-ticket-keys");
    const config = resolveServeConfig(flagsOf(argv.slice(2)), {});
    assert.equal(config.tls?.ticketKeys, "/var/lib/secrets/nixfleet/tls-ticket-keys");
  });

  it("its defaults are the control plane's own defaults", async () => {
    const { unit } = await controlPlane(cpModule(TLS));
    const argv = splitExecStart(String(unit.serviceConfig["ExecStart"]), "/creds");
    const fromModule = resolveServeConfig(flagsOf(argv.slice(2)), {});
    const fromCp = resolveServeConfig(
      { tlsCert: "/creds/tls-cert", tlsKey: "/creds/tls-key", clientCa: "/creds/client-ca" },
      {},
    );
    assert.deepEqual(fromModule, fromCp);
    assert.equal(CP_DEFAULTS.listen, "0.0.0.0:8443");
  });

  it("is hardened: its own user, a strict sandbox, no capabilities for a high port", async () => {
    const { unit, user } = await controlPlane(cpModule(TLS));
    const sc = unit.serviceConfig;
    assert.equal(sc["User"], "nixfleet-cp");
    assert.equal(sc["Group"], "nixfleet-cp");
    assert.deepEqual(user, {
      isSystemUser: true,
      group: "nixfleet-cp",
      home: "/var/lib/nixfleet-cp",
      description: "nixfleet control plane",
    });
    assert.equal(sc["StateDirectory"], "nixfleet-cp");
    assert.equal(sc["ProtectSystem"], "strict");
    assert.equal(sc["NoNewPrivileges"], true);
    assert.equal(sc["PrivateTmp"], true);
    assert.equal(sc["PrivateDevices"], true);
    assert.equal(sc["ProtectHome"], true);
    assert.equal(sc["RestrictSUIDSGID"], true);
    assert.deepEqual(sc["CapabilityBoundingSet"], [""]);
    assert.deepEqual(sc["AmbientCapabilities"], []);
    assert.deepEqual(sc["SystemCallFilter"], ["@system-service", "~@privileged"]);
    assert.equal(sc["MemoryDenyWriteExecute"], undefined, "V8's JIT needs W+X memory");
    assert.equal(sc["Restart"], "always");
    assert.deepEqual(sc["ReadWritePaths"], []);
  });

  it("maps TLS read buffers apart from glibc's heap (MALLOC_MMAP_THRESHOLD_), overridable", async () => {
    const { unit } = await controlPlane(cpModule(TLS));
    assert.equal(unit.environment["MALLOC_MMAP_THRESHOLD_"], "65536");
    const tuned = await controlPlane(
      cpModule(TLS),
      `{ systemd.services.nixfleet-control-plane.environment.MALLOC_MMAP_THRESHOLD_ = "131072"; }`,
    );
    assert.equal(tuned.unit.environment["MALLOC_MMAP_THRESHOLD_"], "131072");
  });

  it("a port below 1024 gets exactly CAP_NET_BIND_SERVICE; a dbPath elsewhere is made writable", async () => {
    const { unit } = await controlPlane(
      cpModule(`${TLS} listen = "[::]:443"; dbPath = "/srv/nixfleet/cp.db";`),
    );
    assert.deepEqual(unit.serviceConfig["CapabilityBoundingSet"], ["CAP_NET_BIND_SERVICE"]);
    assert.deepEqual(unit.serviceConfig["AmbientCapabilities"], ["CAP_NET_BIND_SERVICE"]);
    assert.deepEqual(unit.serviceConfig["ReadWritePaths"], ["/srv/nixfleet"]);
  });

  it("openFirewall opens the listen port (IPv4 and bracketed IPv6); metrics has its own switch", async () => {
    assert.deepEqual(
      await evalModules("firewall", {
        modules: [cpModule(`${TLS} openFirewall = true; listen = "10.0.0.1:9443";`)],
      }),
      [9443],
    );
    assert.deepEqual(
      await evalModules("firewall", {
        modules: [
          cpModule(
            `${TLS} openFirewall = true; listen = "[::]:8443"; metrics = { listen = "[::1]:9102"; openFirewall = true; requireKey = true; };`,
          ),
        ],
      }),
      [8443, 9102],
    );
    assert.deepEqual(await evalModules("firewall", { modules: [cpModule(TLS)] }), []);
  });

  it("extraFlags are quoted for systemd: spaces, % and $ arrive literally", async () => {
    const { unit } = await controlPlane(cpModule(`${TLS} extraFlags = [ "a b" "100%" "$HOME" "q\\"uote" ];`));
    const argv = splitExecStart(String(unit.serviceConfig["ExecStart"]), "/creds");
    const i = argv.indexOf("info");
    assert.deepEqual(argv.slice(i + 1, i + 5), ["a b", "100%", "$HOME", 'q"uote']);
  });

  it("insecure dev mode: --allow-insecure, no credentials, no TLS assertion", async () => {
    const modules = [cpModule(`allowInsecure = true;`)];
    assert.deepEqual(await evalModules("assertions", { modules }), []);
    const { unit } = await controlPlane(...modules);
    const argv = splitExecStart(String(unit.serviceConfig["ExecStart"]), "/creds");
    assert.ok(argv.includes("--allow-insecure"));
    assert.ok(!argv.some((a) => a.startsWith("--tls") || a === "--client-ca"));
    assert.deepEqual(unit.serviceConfig["LoadCredential"], []);
  });

  it("the admin tool runs `keys` as the service user in its state dir, against this dbPath", async () => {
    const { adminTool } = await controlPlane(cpModule(`${TLS} dbPath = "/var/lib/nixfleet-cp/fleet.db";`));
    assert.match(adminTool, /--property=User=nixfleet-cp/);
    assert.match(adminTool, /--property=StateDirectory=nixfleet-cp/);
    assert.match(adminTool, /--setenv=NIXFLEET_CP_DB_PATH=\/var\/lib\/nixfleet-cp\/fleet\.db/);
    assert.match(adminTool, /\/bin\/nixfleet-control-plane "\$@"\n$/);
    assert.deepEqual(await evalModules("systemPackages", { modules: [cpModule(TLS)] }), [
      "nixfleet-control-plane-admin",
    ]);
  });
});

describe("services.nixfleet-control-plane: bad configurations", () => {
  it("no TLS files and no allowInsecure trips an assertion naming the options", async () => {
    const messages = await evalModules<string[]>("assertions", {
      modules: [cpModule(`tls.cert = "/c.pem";`)],
    });
    assert.equal(messages.length, 1);
    assert.match(messages[0] ?? "", /set tls\.cert, tls\.key and tls\.clientCa \(or allowInsecure = true/);
  });

  it("metrics.openFirewall without metrics.listen trips an assertion", async () => {
    const messages = await evalModules<string[]>("assertions", {
      modules: [cpModule(`${TLS} metrics.openFirewall = true;`)],
    });
    assert.match(messages.join("\n"), /metrics\.openFirewall needs metrics\.listen/);
  });

  it("malformed values fail at evaluation, naming the option", async () => {
    const cases: [string, RegExp][] = [
      [`listen = "8443";`, /services\.nixfleet-control-plane\.listen/],
      [`listen = "::1:8443";`, /services\.nixfleet-control-plane\.listen/],
      [`metrics.listen = "localhost";`, /services\.nixfleet-control-plane\.metrics\.listen/],
      [
        `allowInsecure = false; tls = { cert = "/c.pem"; key = "relative.key"; clientCa = "/ca.pem"; };`,
        /services\.nixfleet-control-plane\.tls\.key/,
      ],
      [`pollHint = 0;`, /services\.nixfleet-control-plane\.pollHint/],
      [`executorTick = 0.01;`, /services\.nixfleet-control-plane\.executorTick/],
      [`executorLease = 0.1;`, /services\.nixfleet-control-plane\.executorLease/],
      [`logLevel = "loud";`, /services\.nixfleet-control-plane\.logLevel/],
    ];
    for (const [body, what] of cases) {
      const module = cpModule(body.includes("tls =") ? body : `${TLS} ${body}`);
      await assert.rejects(evalModules("controlPlane", { modules: [module] }), (err: Error) => {
        assert.ok(err instanceof NixEvalError, String(err));
        assert.match(err.stderr, what, body);
        return true;
      });
    }
  });

  it("disabled: no unit, no user, nothing opened", async () => {
    const modules = [`{ services.nixfleet-control-plane = { openFirewall = true; }; }`];
    assert.equal(await evalModules("controlPlane", { modules }), null);
    assert.deepEqual(await evalModules("users", { modules }), []);
    assert.deepEqual(await evalModules("firewall", { modules }), []);
  });
});

describe("services.nixfleet-control-plane: PostgreSQL (database.*)", () => {
  const argvOf = (unit: Unit) => splitExecStart(String(unit.serviceConfig["ExecStart"]), "/creds");

  it("database.url: passed as NIXFLEET_CP_DATABASE_URL, and --db-path is left out (the control plane refuses both)", async () => {
    const url = "postgresql://nixfleet@db.internal:5432/nixfleet?sslmode=verify-full";
    const { unit, adminTool, requires, postgresql } = await controlPlane(
      cpModule(`${TLS} database.url = "${url}"; dbPath = "/srv/elsewhere/cp.db";`),
    );
    assert.equal(unit.environment["NIXFLEET_CP_DATABASE_URL"], url);
    assert.ok(!argvOf(unit).includes("--db-path"), argvOf(unit).join(" "));
    assert.deepEqual(unit.serviceConfig["ReadWritePaths"], [], "no SQLite directory to open up");
    assert.deepEqual(unit.serviceConfig["EnvironmentFile"], []);
    assert.deepEqual(requires, [], "a remote server: no local unit to wait for");
    assert.equal(postgresql.enable, false);
    assert.match(adminTool, /--setenv=NIXFLEET_CP_DATABASE_URL='postgresql:\/\/nixfleet@db\.internal/);
    assert.doesNotMatch(adminTool, /NIXFLEET_CP_DB_PATH/);
    // Persistence keeps only the SQLite state directory: a dbPath elsewhere is no loss here.
    assert.deepEqual(
      await evalModules("assertions", {
        modules: [cpModule(`${TLS} database.url = "${url}"; dbPath = "/srv/elsewhere/cp.db";`)],
        impermanence: true,
      }),
      [],
    );
  });

  it("executorLease reaches the control plane as its executor lease, fractions included", async () => {
    const url = "postgresql://nixfleet@db.internal/nixfleet";
    const { unit } = await controlPlane(cpModule(`${TLS} database.url = "${url}"; executorLease = 2.5;`));
    const argv = argvOf(unit);
    const config = resolveServeConfig(flagsOf(argv.slice(2)), {
      NIXFLEET_CP_DATABASE_URL: unit.environment["NIXFLEET_CP_DATABASE_URL"],
    });
    assert.equal(config.executorLeaseMs, 2500);
    assert.equal(config.databaseUrl, url);
  });

  it("database.environmentFile: the secret URL stays out of the store, read by systemd", async () => {
    const { unit, adminTool } = await controlPlane(
      cpModule(`${TLS} database.environmentFile = "/run/secrets/cp-db.env";`),
    );
    assert.deepEqual(unit.serviceConfig["EnvironmentFile"], ["/run/secrets/cp-db.env"]);
    assert.equal(unit.environment["NIXFLEET_CP_DATABASE_URL"], undefined);
    assert.ok(!argvOf(unit).includes("--db-path"));
    assert.match(adminTool, /--property=EnvironmentFile='?\/run\/secrets\/cp-db\.env'? /);
  });

  it("database.createLocally: a local PostgreSQL with the service user's own database, over the socket", async () => {
    const { unit, requires, postgresql } = await controlPlane(
      cpModule(`${TLS} database.createLocally = true;`),
    );
    assert.deepEqual(postgresql, {
      enable: true,
      ensureDatabases: ["nixfleet-cp"],
      ensureUsers: [{ name: "nixfleet-cp", ensureDBOwnership: true }],
    });
    assert.deepEqual(requires, ["postgresql.service"]);
    assert.ok(unit.after.includes("postgresql.service"));
    assert.ok(!argvOf(unit).includes("--db-path"));
    const url = unit.environment["NIXFLEET_CP_DATABASE_URL"] ?? "";
    // What the control plane checks (a postgres URL) and what pg makes of it: peer authentication
    // over the Unix socket as the service user, into its own database — no password anywhere.
    assert.equal(new URL(url).protocol, "postgresql:");
    const parsed = parsePgUrl(url);
    assert.equal(parsed.host, "/run/postgresql");
    assert.equal(parsed.user, "nixfleet-cp");
    assert.equal(parsed.database, "nixfleet-cp");
    assert.ok(!parsed.password);
    assert.ok(
      ((unit.serviceConfig["RestrictAddressFamilies"] as string[]) ?? []).includes("AF_UNIX"),
      "the sandbox lets it reach the socket",
    );
    const persisted = await evalModules<Record<string, { directories: { directory: string }[] }>>(
      "persistence",
      { modules: [cpModule(`${TLS} database.createLocally = true;`)], impermanence: true },
    );
    assert.deepEqual(
      Object.values(persisted).flatMap((p) => p.directories.map((d) => d.directory)),
      ["/var/lib/nixfleet-cp", "/var/lib/postgresql"],
    );
  });

  it("contradictions and secrets in the store are named", async () => {
    const assertions = (body: string) =>
      evalModules<string[]>("assertions", { modules: [cpModule(`${TLS} ${body}`)] });
    assert.match(
      (await assertions(`database.createLocally = true; database.url = "postgres://x/y";`)).join("\n"),
      /createLocally provides the database URL itself; unset database\.url/,
    );
    assert.match(
      (await assertions(`database.url = "postgres://x/y"; database.environmentFile = "/run/e";`)).join("\n"),
      /database\.url and database\.environmentFile are both set/,
    );
    const warnings = await evalModules<string[]>("warnings", {
      modules: [cpModule(`${TLS} database.url = "postgres://cp:hunter2@db/cp";`)],
    });
    assert.match(warnings.join("\n"), /database\.url holds a password.*database\.environmentFile/);
    assert.deepEqual(
      await evalModules("warnings", { modules: [cpModule(`${TLS} database.url = "postgres://cp@db/cp";`)] }),
      [],
    );
    await assert.rejects(
      evalModules("controlPlane", { modules: [cpModule(`${TLS} database.url = "mysql://db/cp";`)] }),
      (err: Error) =>
        err instanceof NixEvalError && /services\.nixfleet-control-plane\.database\.url/.test(err.stderr),
    );
  });
});

describe("services.nixfleet-control-plane: the real control plane accepts the unit's command line", () => {
  it("starts with TLS from the credentials dir, and the admin tool's argv creates a key in its DB", async (t) => {
    const dir = tempDir(t);
    const pki = createPki(join(dir, "pki"));
    const dbPath = join(dir, "state", "cp.db");
    mkdirSync(join(dir, "state"));
    const { unit, adminTool } = await controlPlane(
      cpModule(`
        listen = "127.0.0.1:0";
        dbPath = "${dbPath}";
        tls = { cert = "${pki.server.cert}"; key = "${pki.server.key}"; clientCa = "${pki.ca}"; };
        metrics.listen = "127.0.0.1:0";
        logLevel = "debug";
      `),
    );
    // systemd copies each LoadCredential=NAME:SOURCE to $CREDENTIALS_DIRECTORY/NAME.
    const creds = join(dir, "credentials");
    mkdirSync(creds);
    for (const entry of unit.serviceConfig["LoadCredential"] as string[]) {
      const [name, source] = [entry.slice(0, entry.indexOf(":")), entry.slice(entry.indexOf(":") + 1)];
      copyFileSync(source, join(creds, name));
    }
    const { child, listening } = await startLikeSystemd(t, unit, creds);
    assert.match(listening, /"url":"https:\/\/127\.0\.0\.1:\d+"/);
    assert.ok(existsSync(dbPath), "the database is where dbPath says");
    child.kill("SIGTERM");
    assert.equal(await exited(child), 0, "SIGTERM is a clean stop");

    // The admin tool: `systemd-run … --setenv=NIXFLEET_CP_DB_PATH=… -- nixfleet-control-plane "$@"`.
    const env = /--setenv=NIXFLEET_CP_DB_PATH=(\S+)/.exec(adminTool)?.[1];
    assert.equal(env, dbPath);
    const keys = spawn(
      process.execPath,
      [...programArgs("control-plane"), "keys", "create", "--name", "admin", "--role", "admin"],
      {
        cwd: REPO,
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, NIXFLEET_CP_DB_PATH: env },
      },
    );
    let stdout = "";
    let stderr = "";
    keys.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    keys.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    assert.equal(await exited(keys), 0, stderr);
    assert.match(stdout.trim(), /^nfk-[0-9a-f]{64}$/);
  });

  it("starts in insecure dev mode with the unit's flags", async (t) => {
    const dir = tempDir(t);
    const { unit } = await controlPlane(
      cpModule(`allowInsecure = true; listen = "127.0.0.1:0"; dbPath = "${join(dir, "cp.db")}";`),
    );
    const { child, listening } = await startLikeSystemd(t, unit, join(dir, "no-credentials"));
    assert.match(listening, /"url":"http:\/\/127\.0\.0\.1:\d+"/);
    child.kill("SIGTERM");
    assert.equal(await exited(child), 0);
  });
});
