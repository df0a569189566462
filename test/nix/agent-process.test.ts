/**
 * The real agent process run the way the unit runs it: `nixfleet-agent --config <the file the
 * module rendered>` (plus the test-only `paths` so it stays inside a temp dir). It must start
 * on that file, stop cleanly on SIGTERM — and on SIGHUP, which is what the unit's ExecReload
 * sends when a switch changes the agent (reloadIfChanged): finish the cycle, exit 0, and let
 * Restart=always start the new package and configuration.
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { programArgs } from "../fixtures/programs.js";
import { tempDir } from "../fixtures/tmp.js";
import { evalModules, NIX_ENV, nixString, REPO } from "./nix-eval.js";

const AGENT_MAIN = join(REPO, "src/agent/main.ts");

/** A sandboxed host: a current-system link to a real (tiny) store path, profile and lock dirs. */
function sandboxHost(dir: string): { currentSystem: string; systemProfile: string; switchLock: string } {
  const payload = join(dir, "generation-0");
  writeFileSync(payload, "nixfleet test generation\n");
  const storePath = execFileSync("nix-store", ["--add", payload], { env: NIX_ENV }).toString().trim();
  mkdirSync(join(dir, "run"));
  mkdirSync(join(dir, "profiles"));
  const currentSystem = join(dir, "run", "current-system");
  symlinkSync(storePath, currentSystem);
  return {
    currentSystem,
    systemProfile: join(dir, "profiles", "system"),
    switchLock: join(dir, "run", "switch-to-configuration.lock"),
  };
}

/** The module's rendered configuration for this sandbox, written where the test can point at it. */
async function renderedConfig(dir: string): Promise<string> {
  const rendered = await evalModules<{ json: string }>("agent", {
    modules: [
      `{ networking.hostName = "web-01";
         services.nixfleet-agent = {
           enable = true;
           controlPlaneUrl = "http://127.0.0.1:1";
           allowInsecure = true;
           activation = "direct";
           retryInterval = 60;
           dbPath = ${nixString(join(dir, "state.db"))};
           healthChecks.command = [ { name = "ok"; command = "true"; } ];
         }; }`,
    ],
  });
  const config = JSON.parse(rendered.json) as Record<string, unknown>;
  config["paths"] = sandboxHost(dir); // test-only keys; the module never renders them
  const file = join(dir, "agent.json");
  writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

function startAgent(t: { after(fn: () => Promise<void> | void): void }, config: string): ChildProcess {
  const child = spawn(process.execPath, [...programArgs("agent"), "--config", config], {
    cwd: REPO,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...NIX_ENV, NIXFLEET_CONFIG: "" },
  });
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exitOf(child);
    }
  });
  return child;
}

function waitForEvent(
  child: ChildProcess,
  event: string,
  timeoutMs: number,
): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let out = "";
    let err = "";
    const timer = setTimeout(
      () => reject(new Error(`no ${event} within ${timeoutMs} ms\n${out}\n${err}`)),
      timeoutMs,
    );
    child.stderr!.on("data", (d: Buffer) => {
      err += d.toString();
    });
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      for (const line of out.split("\n")) {
        if (!line.includes(`"event":"${event}"`)) continue;
        clearTimeout(timer);
        resolve(JSON.parse(line) as Record<string, unknown>);
        return;
      }
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`agent exited (${code ?? signal}) before ${event}\n${out}\n${err}`));
    });
  });
}

function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
}

const handlesSighup = readFileSync(AGENT_MAIN, "utf8").includes("SIGHUP");

describe("the real agent on the module's configuration file", () => {
  it("starts with exactly the rendered settings and stops cleanly on SIGTERM", async (t) => {
    const dir = tempDir(t);
    const config = await renderedConfig(dir);
    const agent = startAgent(t, config);
    const started = await waitForEvent(agent, "agent_started", 60_000);
    assert.equal(started["machineId"], "web-01");
    assert.deepEqual(started["controlPlaneUrl"], ["http://127.0.0.1:1"]);
    assert.equal(started["activation"], "direct");
    assert.deepEqual(started["checks"], ["command:ok"]);
    agent.kill("SIGTERM");
    assert.deepEqual(await exitOf(agent), { code: 0, signal: null });
  });

  it("SIGHUP (the unit's ExecReload) ends the agent cleanly so systemd restarts it on the new config", {
    todo: handlesSighup ? false : "src/agent/main.ts does not handle SIGHUP yet (node's default kills it)",
  }, async (t) => {
    const dir = tempDir(t);
    const agent = startAgent(t, await renderedConfig(dir));
    await waitForEvent(agent, "agent_started", 60_000);
    agent.kill("SIGHUP");
    assert.deepEqual(await exitOf(agent), { code: 0, signal: null });
  });
});
