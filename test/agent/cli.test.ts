/**
 * The nixfleet-agent command line as a real process: --help documents every flag, exit codes
 * (0, 1, 2, 78), and configuration errors that name the key and where it came from.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { OPTIONS } from "../../src/agent/config.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { programArgs } from "../fixtures/programs.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

const REPO = join(import.meta.dirname, "../..");
const run = promisify(execFile);

async function agent(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("NIXFLEET_")));
  try {
    const { stdout, stderr } = await run(process.execPath, [...programArgs("agent"), ...args], {
      cwd: REPO,
      env: { ...clean, ...env },
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

describe("nixfleet-agent command line", () => {
  const dir = makeTempDir("nixfleet-cli-");
  let pki: Pki;
  const file = (name: string, content: unknown) => {
    const path = join(dir, name);
    writeFileSync(path, typeof content === "string" ? content : JSON.stringify(content));
    return path;
  };
  before(() => {
    pki = createPki(join(dir, "pki"));
  });
  after(() => removeTempDir(dir));

  it("--help documents every flag with its variable and file key, and exits 0", async () => {
    const { code, stdout } = await agent(["--help"]);
    assert.equal(code, 0);
    assert.match(stdout, /--config <path>/);
    for (const o of OPTIONS) {
      assert.ok(stdout.includes(`--${o.flag}`), `--${o.flag} is documented`);
      assert.ok(stdout.replace(/\s+/g, " ").includes(o.env), `${o.env} is documented`);
    }
    assert.match(
      stdout,
      /Exit codes: 0 clean stop, 1 runtime failure, 2 bad command line, 78 bad\s+configuration/,
    );
    const version = await agent(["--version"]);
    assert.deepEqual([version.code, version.stdout.trim()], [0, "0.1.0"]);
  });

  it("a bad key in the file exits 78 naming the key and the file", async () => {
    const bad = file("bad.json", { controlPlaneUrl: "https://cp:8443", pollInteval: 5 });
    const { code, stderr } = await agent(["--config", bad]);
    assert.equal(code, 78);
    assert.match(stderr, /pollInteval/);
    assert.ok(stderr.includes(bad), stderr);
    const snake = file("snake.json", {
      controlPlaneUrl: "https://cp:8443",
      healthChecks: { http: [{ url: "http://x/", expected_status: 204 }] },
    });
    const r2 = await agent(["--config", snake]);
    assert.equal(r2.code, 78);
    assert.match(r2.stderr, /healthChecks\.http\[0\]\.expected_status .*did you mean "expectedStatus"/);
  });

  it("a bad value from a flag or variable exits 78 naming the flag or variable", async () => {
    const ok = file("ok.json", { controlPlaneUrl: "https://cp:8443", machineId: "web-01" });
    const flag = await agent(["--config", ok, "--poll-interval", "soon"]);
    assert.equal(flag.code, 78);
    assert.match(flag.stderr, /pollInterval \(from flag --poll-interval\)/);
    const env = await agent(["--config", ok], { NIXFLEET_METRICS_PORT: "http" });
    assert.equal(env.code, 78);
    assert.match(env.stderr, /metricsPort \(from environment variable NIXFLEET_METRICS_PORT\)/);
    const missing = await agent(["--config", join(dir, "nope.json")]);
    assert.equal(missing.code, 78);
    assert.match(missing.stderr, /nope\.json.*file does not exist/);
    const noUrl = await agent(["--config", file("empty.json", {})]);
    assert.equal(noUrl.code, 78);
    assert.match(noUrl.stderr, /controlPlaneUrl .*is required/);
  });

  it("TLS problems exit 78 naming the option: unreadable files, and a CN that is not the machine id", async () => {
    const client = pki.client("web-01");
    const noCa = file("noca.json", {
      controlPlaneUrl: "https://cp:8443",
      machineId: "web-01",
      tls: { caCert: join(dir, "missing-ca.pem"), clientCert: client.cert, clientKey: client.key },
    });
    const r1 = await agent(["--config", noCa]);
    assert.equal(r1.code, 78);
    assert.match(r1.stderr, /tls\.caCert .*missing-ca\.pem: file does not exist/);
    const wrongCn = file("cn.json", {
      controlPlaneUrl: "https://cp:8443",
      machineId: "web-02",
      tls: { caCert: pki.ca, clientCert: client.cert, clientKey: client.key },
    });
    const r2 = await agent(["--config", wrongCn]);
    assert.equal(r2.code, 78);
    assert.match(r2.stderr, /machineId .*"web-02" does not match the CN "web-01"/);
  });

  it("a bad command line exits 2", async () => {
    assert.equal((await agent(["--bogus"])).code, 2);
    assert.equal((await agent(["--protocol", "http3"])).code, 2);
    assert.equal((await agent(["extra-argument"])).code, 2);
  });

  it("a runtime failure at start (metrics port taken) exits 1 with a fatal log line", async () => {
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", () => r()));
    const port = (blocker.address() as { port: number }).port;
    try {
      const cfg = file("port.json", {
        controlPlaneUrl: "https://127.0.0.1:9",
        machineId: "web-01",
        dbPath: join(dir, "state", "state.db"),
        metricsPort: port,
        metricsAddress: "127.0.0.1",
        activation: "direct",
        paths: { currentSystem: join(dir, "current-system") },
      });
      const { code, stdout } = await agent(["--config", cfg]);
      assert.equal(code, 1);
      const fatal = stdout
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .find((l) => l["level"] === "fatal");
      assert.ok(fatal, stdout);
      assert.match(String(fatal["msg"]), /EADDRINUSE/);
    } finally {
      blocker.close();
    }
  });
});
