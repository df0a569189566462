import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { createFleetClient, createTransport } from "../../src/cli/client.js";
import { UsageError } from "../../src/cli/errors.js";
import { resolveSettings } from "../../src/cli/settings.js";
import { Harness } from "../control-plane/harness.js";
import { createPki } from "../fixtures/pki.js";
import { tempDir } from "../fixtures/tmp.js";
import { expiredClientCert } from "./expired-cert.js";

function write(path: string, data: unknown, mode = 0o600): string {
  mkdirSync(join(path, ".."), { recursive: true });
  writeFileSync(path, JSON.stringify(data));
  chmodSync(path, mode);
  return path;
}

describe("CLI settings precedence", () => {
  it("an expired client certificate is refused before connecting, naming it and its end date", (t) => {
    const pki = createPki(join(tempDir(t), "pki"));
    const expired = expiredClientCert(pki, "alice");
    const settings = resolveSettings({
      flags: {
        controlPlaneUrl: "https://127.0.0.1:1",
        caCert: pki.ca,
        clientCert: expired.cert,
        clientKey: expired.key,
      },
      env: {},
      cwd: tempDir(t),
    });
    assert.throws(
      () => createTransport(settings),
      (e: unknown) =>
        e instanceof UsageError &&
        /^--client-cert: the client certificate .*client\.pem expired on 2020-01-02T00:00:00\.000Z; renew it/.test(
          e.message,
        ),
    );
    const fresh = pki.client("alice");
    createTransport({ ...settings, clientCert: fresh.cert, clientKey: fresh.key });
  });

  it("flags beat env beat the user file beat the project file", (t) => {
    const dir = tempDir(t);
    const home = join(dir, "home");
    const project = join(dir, "repo", "sub", "deeper");
    mkdirSync(project, { recursive: true });
    write(join(dir, "repo", ".nixfleet.json"), {
      controlPlaneUrl: "https://project:1",
      caCert: "certs/ca.pem",
      protocol: "connect",
      timeout: "5s",
    });
    write(join(home, ".config/nixfleet/config.json"), {
      controlPlaneUrl: "https://user:2",
      apiKey: "nfk-user",
    });
    const env = { HOME: home, NIXFLEET_API_KEY: "nfk-env" };

    const fromFiles = resolveSettings({ flags: {}, env: { HOME: home }, cwd: project });
    assert.equal(fromFiles.controlPlaneUrl, "https://user:2");
    assert.equal(fromFiles.apiKey, "nfk-user");
    assert.equal(
      fromFiles.caCert,
      join(dir, "repo", "certs/ca.pem"),
      "relative paths resolve against the project file",
    );
    assert.equal(fromFiles.protocol, "connect");
    assert.equal(fromFiles.timeoutMs, 5000);
    assert.match(fromFiles.sources.controlPlaneUrl ?? "", /config\.json$/);

    const withEnv = resolveSettings({ flags: {}, env, cwd: project });
    assert.equal(withEnv.apiKey, "nfk-env");
    assert.equal(withEnv.sources.apiKey, "NIXFLEET_API_KEY");

    const withFlags = resolveSettings({
      flags: { apiKey: "nfk-flag", controlPlaneUrl: "http://flag:3/" },
      env,
      cwd: project,
    });
    assert.equal(withFlags.apiKey, "nfk-flag");
    assert.equal(withFlags.controlPlaneUrl, "http://flag:3", "trailing slash trimmed");
    assert.equal(withFlags.sources.apiKey, "flag");
  });

  it("uses defaults when nothing is configured", (t) => {
    const dir = tempDir(t);
    const s = resolveSettings({ flags: {}, env: { HOME: dir }, cwd: dir });
    assert.equal(s.controlPlaneUrl, "https://localhost:8443");
    assert.equal(s.protocol, "grpc");
    assert.equal(s.timeoutMs, 30_000);
    assert.equal(s.apiKey, undefined);
  });

  it("an explicit --config file replaces the user and project files", (t) => {
    const dir = tempDir(t);
    write(join(dir, ".nixfleet.json"), { controlPlaneUrl: "https://project:1" });
    const explicit = write(join(dir, "other.json"), { controlPlaneUrl: "https://explicit:4" });
    assert.equal(
      resolveSettings({ flags: {}, env: { HOME: dir }, cwd: dir, configFile: explicit }).controlPlaneUrl,
      "https://explicit:4",
    );
  });

  it("refuses a key in a file others can read, telling how to fix it", (t) => {
    const dir = tempDir(t);
    write(join(dir, ".config/nixfleet/config.json"), { apiKey: "nfk-secret" }, 0o644);
    assert.throws(
      () => resolveSettings({ flags: {}, env: { HOME: dir }, cwd: dir }),
      (e: Error) =>
        e instanceof UsageError && /readable by others \(mode 644\); run: chmod 600/.test(e.message),
    );
  });

  it("names the key and file of bad settings", (t) => {
    const dir = tempDir(t);
    const cases: [unknown, RegExp][] = [
      [{ controlPlaneURL: "x" }, /unknown key "controlPlaneURL"/],
      [{ apiKey: 42 }, /"apiKey" must be a string/],
      [[1, 2], /must hold a JSON object/],
      [{ protocol: "http3" }, /: "protocol" in .*s\.json: must be "grpc" or "connect"/],
      [{ controlPlaneUrl: "ftp://x" }, /: "controlPlaneUrl" in .*s\.json: .*must start with https:\/\//],
      [{ controlPlaneUrl: "not a url" }, /: "controlPlaneUrl" in .*s\.json: .*is not a URL/],
      [{ timeout: "soon" }, /: "timeout" in .*s\.json: must be a positive duration/],
      [{ timeout: "abc" }, /: "timeout" in .*s\.json: must be a positive duration .*got "abc"/],
      [{ clientCert: "/a.pem" }, /client certificate and key must be given together/],
    ];
    for (const [content, why] of cases) {
      const file = write(join(dir, "s.json"), content);
      assert.throws(
        () => resolveSettings({ flags: {}, env: { HOME: dir }, cwd: dir, configFile: file }),
        why,
        JSON.stringify(content),
      );
    }
    // Files the settings point at are checked when the client is made, named the same way.
    const file = write(join(dir, "s.json"), { caCert: "nope.pem" });
    const settings = resolveSettings({ flags: {}, env: { HOME: dir }, cwd: dir, configFile: file });
    assert.throws(
      () => createTransport(settings),
      (e: unknown) => e instanceof UsageError && /^"caCert" in .*s\.json: .*nope\.pem/.test(e.message),
    );
    assert.throws(
      () => resolveSettings({ flags: {}, env: { HOME: dir, NIXFLEET_TIMEOUT: "abc" }, cwd: dir }),
      /: NIXFLEET_TIMEOUT: must be a positive duration/,
    );
    assert.throws(
      () => resolveSettings({ flags: { timeout: "abc" }, env: { HOME: dir }, cwd: dir }),
      /: --timeout: must be a positive duration/,
    );
    writeFileSync(join(dir, "broken.json"), "{nope");
    assert.throws(
      () =>
        resolveSettings({ flags: {}, env: { HOME: dir }, cwd: dir, configFile: join(dir, "broken.json") }),
      /cannot read settings file .*broken.json/,
    );
  });
});

describe("CLI settings: several control plane URLs", () => {
  it("takes a comma-separated list (flag, variable) or a JSON list (file), in order, normalised", (t) => {
    const dir = tempDir(t);
    const fromEnv = resolveSettings({
      flags: {},
      env: { HOME: dir, NIXFLEET_CONTROL_PLANE_URL: "https://b:2/, https://a:1" },
      cwd: dir,
    });
    assert.deepEqual(fromEnv.controlPlaneUrls, ["https://b:2", "https://a:1"]);
    assert.equal(fromEnv.controlPlaneUrl, "https://b:2,https://a:1");
    const file = write(join(dir, "s.json"), { controlPlaneUrl: ["https://c:3", "https://d:4/"] });
    assert.deepEqual(
      resolveSettings({ flags: {}, env: { HOME: dir }, cwd: dir, configFile: file }).controlPlaneUrls,
      ["https://c:3", "https://d:4"],
    );
    assert.deepEqual(resolveSettings({ flags: {}, env: { HOME: dir }, cwd: dir }).controlPlaneUrls, [
      "https://localhost:8443",
    ]);
  });

  it("refuses a bad entry or a repeated one, naming where the list came from", (t) => {
    const dir = tempDir(t);
    const cases: [string, RegExp][] = [
      [
        "https://a:1,ftp://b",
        /^--control-plane-url: control plane URL "ftp:\/\/b" must start with https:\/\//,
      ],
      ["https://a:1,not a url", /^--control-plane-url: control plane URL "not a url" is not a URL/],
      ["https://a:1,https://a:1/", /^--control-plane-url: control plane URL https:\/\/a:1 is listed twice/],
      [" , ", /^--control-plane-url: no control plane URL given/],
    ];
    for (const [given, why] of cases) {
      assert.throws(
        () => resolveSettings({ flags: { controlPlaneUrl: given }, env: { HOME: dir }, cwd: dir }),
        (e: unknown) => e instanceof UsageError && why.test(e.message),
        given,
      );
    }
    const file = write(join(dir, "s.json"), { controlPlaneUrl: ["https://a", 7] });
    assert.throws(
      () => resolveSettings({ flags: {}, env: { HOME: dir }, cwd: dir, configFile: file }),
      /"controlPlaneUrl" must be a string or a list of strings/,
    );
  });

  it("a call skips an unreachable URL and goes to the next (unary and streaming, real control plane)", async (t) => {
    const dir = tempDir(t);
    const pki = createPki(join(dir, "pki"));
    const cp = await Harness.start(pki);
    t.after(() => cp.close());
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const dead = `https://127.0.0.1:${(server.address() as { port: number }).port}`;
    await new Promise<void>((resolve) => server.close(() => resolve()));

    const settings = (url: string) =>
      resolveSettings({
        flags: { controlPlaneUrl: url, caCert: pki.ca, apiKey: cp.keys.admin, timeout: "10s" },
        env: { HOME: dir },
        cwd: dir,
      });
    // Alone, the dead URL is what the operator hears about: UNAVAILABLE.
    await assert.rejects(
      createFleetClient(settings(dead)).getCaller({}),
      (e: unknown) => ConnectError.from(e).code === Code.Unavailable,
    );
    const client = createFleetClient(settings(`${dead},${cp.url}`));
    const caller = await client.getCaller({});
    assert.ok(caller.actor, "answered by the second URL");
    // A stream too: the control plane's own answer (no such rollout), not the dead URL's.
    await assert.rejects(
      (async () => {
        for await (const _ of client.watchRollout({ rolloutId: `r-${randomUUID()}` })) {
          // nothing
        }
      })(),
      (e: unknown) => ConnectError.from(e).code === Code.NotFound,
    );
  });
});
