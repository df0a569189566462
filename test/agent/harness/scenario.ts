/**
 * One agent integration scenario: a throwaway PKI, the scripted control plane on a real mTLS
 * socket, a sandboxed host with its first generation installed, the test's system closures
 * (optionally pushed to a signed file:// or HTTP cache and deleted locally), and the real agent
 * process. Everything is removed after the test.
 */
import { join } from "node:path";
import Database from "better-sqlite3";
import { BinaryCache, type CacheServer } from "../../fixtures/cache.js";
import { type AgentProcess, createHost, type TestHost } from "../../fixtures/host.js";
import type { SystemClosure, SystemSpec } from "../../fixtures/nix.js";
import { createPki, type Pki } from "../../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../../fixtures/tmp.js";
import { ScriptedControlPlane } from "./control-plane.js";

export interface ScenarioOptions {
  machineId?: string;
  /** Closures to build besides the first generation ("gen1", installed as running). */
  systems?: SystemSpec[];
  /** Labels to push to the cache (and delete from the local store). */
  cached?: string[];
  /** Serve the cache over HTTP (else file://). */
  httpCache?: boolean;
  /** How the first generation's own switch behaves (it is installed, never switched to first). */
  gen1?: Omit<SystemSpec, "label">;
  /** Start the control plane (default true). */
  startControlPlane?: boolean;
}

export interface Scenario {
  dir: string;
  pki: Pki;
  cp: ScriptedControlPlane;
  host: TestHost;
  systems: Record<string, SystemClosure>;
  gen1: SystemClosure;
  cache: BinaryCache;
  cacheServer: CacheServer | undefined;
  /** The URL the control plane should hand out for this cache. */
  cacheUrl: string;
  machineId: string;
  /** Writes the agent config: fast test defaults, TLS, this host's paths, then `overrides`. */
  writeConfig(overrides?: Record<string, unknown>): string;
  startAgent(options?: { args?: string[]; env?: NodeJS.ProcessEnv }): AgentProcess;
  /** Opens the agent's journal read-only. */
  journal(): Database.Database;
  cleanup(): Promise<void>;
}

/** A command health check that passes while the running generation contains `healthy`. */
export function markerCheck(host: TestHost, name = "marker"): Record<string, unknown> {
  return { name, command: `test -e ${host.paths.currentSystem}/healthy`, timeout: 5, interval: 1 };
}

export async function setupScenario(options: ScenarioOptions = {}): Promise<Scenario> {
  const dir = makeTempDir("nixfleet-agent-it-");
  const machineId = options.machineId ?? "web-01";
  let cp: ScriptedControlPlane | undefined;
  let host: TestHost | undefined;
  let cacheServer: CacheServer | undefined;
  try {
    const pki = createPki(join(dir, "pki"));
    pki.client(machineId);
    cp = await ScriptedControlPlane.start({ pki });
    if (options.startControlPlane === false) await cp.stop();
    host = createHost(join(dir, "host"), machineId);
    const specs: SystemSpec[] = [{ ...options.gen1, label: "gen1" }, ...(options.systems ?? [])];
    const systems = await host.buildSystems(specs);
    const gen1 = systems["gen1"]!;
    await host.install(gen1.path);
    const cache = await BinaryCache.create(join(dir, "cache"));
    const cached = (options.cached ?? []).map((label) => {
      const s = systems[label];
      if (!s) throw new Error(`no system ${label}`);
      return s.path;
    });
    await cache.push(cached, { deleteLocal: true });
    if (options.httpCache) cacheServer = await cache.serve();
    const cacheUrl = cacheServer ? cacheServer.url : cache.fileUrl;
    const theCp = cp;
    const theHost = host;
    const client = pki.client(machineId);
    return {
      dir,
      pki,
      cp: theCp,
      host: theHost,
      systems,
      gen1,
      cache,
      cacheServer,
      cacheUrl,
      machineId,
      writeConfig(overrides = {}) {
        return theHost.writeConfig({
          controlPlaneUrl: theCp.url,
          tls: { caCert: pki.ca, clientCert: client.cert, clientKey: client.key },
          tags: ["web", "test"],
          pollInterval: 1,
          retryInterval: 1,
          healthInterval: 3,
          verifyTimeout: 5,
          activationTimeout: 20,
          heartbeatInterval: 1,
          requestTimeout: 5,
          fetchTimeout: 60,
          logLevel: "debug",
          healthChecks: { command: [markerCheck(theHost)] },
          ...overrides,
        });
      },
      startAgent(opts = {}) {
        return theHost.startAgent({ ...opts, trustedPublicKeys: cache.trustedPublicKeys });
      },
      journal() {
        return new Database(theHost.paths.dbPath, { readonly: true, fileMustExist: true });
      },
      async cleanup() {
        await theHost.cleanup();
        await cacheServer?.stop();
        await theCp.stop();
        removeTempDir(dir);
      },
    };
  } catch (err) {
    await host?.cleanup();
    await cacheServer?.stop();
    await cp?.stop();
    removeTempDir(dir);
    throw err;
  }
}

/** Rows of the deployments table, oldest first. */
export function deploymentRows(db: Database.Database): Array<Record<string, unknown>> {
  return db.prepare("SELECT * FROM deployments ORDER BY created_at, rowid").all() as Array<
    Record<string, unknown>
  >;
}

export function phaseRows(db: Database.Database, deploymentId: string): Array<Record<string, unknown>> {
  return db
    .prepare(
      "SELECT phase, started_at, ended_at, error FROM deployment_phases WHERE deployment_id = ? ORDER BY id",
    )
    .all(deploymentId) as Array<Record<string, unknown>>;
}
