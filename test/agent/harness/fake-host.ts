/**
 * Fakes of the deploy cycle's ports (Nix, activation, host paths, health) over one `World` that
 * keeps what really happened on the "host": where current-system and the profile point, which
 * switches ran and how they ended. A World outlives the agent objects built over it, so a test
 * can drop an agent mid-cycle (a crash), build a new one over the same journal file and the same
 * World, and see what a restarted agent would see.
 */
import {
  type ActivationHandle,
  type ActivationStatus,
  type Activator,
  SwitchQueryError,
} from "../../../src/agent/activation.js";
import type { AgentConfig } from "../../../src/agent/config.js";
import type { State } from "../../../src/agent/cycle/types.js";
import { Deployer } from "../../../src/agent/deployer.js";
import type { HealthSnapshot } from "../../../src/agent/health/runner.js";
import type { SwitchLockState } from "../../../src/agent/host.js";
import type { Deployment, Journal } from "../../../src/agent/journal/journal.js";
import { AgentMetrics } from "../../../src/agent/metrics.js";
import { FetchError } from "../../../src/agent/nix.js";
import { healthRow, reportRow } from "../../../src/agent/transport/outbox-row.js";
import { Parked } from "../../../src/agent/wait.js";
import { createLogger } from "../../../src/common/logger.js";

export const GEN1 = "/nix/store/0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-1";
export const GEN2 = "/nix/store/1c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-2";
export const GEN3 = "/nix/store/2c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01-3";

/** How a generation's own switch-to-configuration behaves when run. */
export interface SwitchBehaviour {
  /** Exit code (0 and 4 switch current-system to the path; anything else leaves it). */
  code?: number;
  /** Never ends on its own (stopped only by `stop`)… */
  hang?: boolean;
  /** …unless it ends (exit 0) after being looked at this many times. */
  endsAfterPolls?: number;
  /** Switches current-system somewhere else (a foreign generation). */
  lands?: string;
  /** Ends as a `failed` unit read from systemd (no status file): exit `code` with this reason. */
  failedUnit?: string;
  /** The first this many looks at the switch cannot read its state (systemd does not answer). */
  queryFailures?: number;
}

export interface SwitchRecord {
  path: string;
  verb: "switch" | "test";
  role: string;
  deploymentId: string;
  status: ActivationStatus;
  polls: number;
  queryFailures: number;
}

export class World {
  current: string | null = GEN1;
  /** What the boot loader boots: moved by `switch` and `boot`, not by `test` (as on NixOS). */
  bootDefault: string | null = GEN1;
  bootId = "boot-1";
  /** `switch-to-configuration boot` runs, by path. */
  boots: string[] = [];
  profileGenerations: string[] = [GEN1];
  profileAt = 1;
  store = new Set<string>([GEN1]);
  /** Paths the cache can deliver; anything else fails to fetch. */
  cache = new Set<string>();
  switches: SwitchRecord[] = [];
  behaviours = new Map<string, SwitchBehaviour>();
  /** Generations whose health checks pass. */
  healthy = new Set<string>([GEN1]);
  lockHeld = false;
  /** Calls that fail, by operation name (e.g. "setProfile"). */
  failing = new Set<string>();
  /** Resolves the pending fetch when set (a fetch in progress the test controls). */
  fetchGate: Promise<void> | undefined;
  clock = 1_000_000;

  profile(): string | null {
    return this.profileGenerations[this.profileAt - 1] ?? null;
  }

  /**
   * A reboot (power cut, panic): a new boot id, the boot loader's default runs, and whatever
   * switch was running is gone without an exit status.
   */
  reboot(): void {
    this.bootId = `boot-${Number(this.bootId.slice(5)) + 1}`;
    this.current = this.bootDefault;
    for (const rec of this.switches) if (rec.status.state === "running") rec.status = { state: "vanished" };
  }

  /** Switches started for `path` (forward or rollback). */
  switchesTo(path: string): SwitchRecord[] {
    return this.switches.filter((s) => s.path === path);
  }

  private finishSwitch(rec: SwitchRecord): void {
    const b = this.behaviours.get(rec.path) ?? {};
    if (b.hang) return;
    const code = b.code ?? 0;
    if (code === 0 || code === 4) this.land(rec, b.lands ?? rec.path);
    rec.status =
      b.failedUnit !== undefined
        ? { state: "exited", code, reason: b.failedUnit }
        : { state: "exited", code };
  }

  /** A successful switch: `test` activates only, `switch` makes it the boot default too. */
  private land(rec: SwitchRecord, path: string): void {
    this.current = path;
    if (rec.verb === "switch") this.bootDefault = path;
  }

  nix() {
    return {
      fetch: async (path: string, _cacheUrl: string | null, options: { signal?: AbortSignal }) => {
        if (this.fetchGate) await this.fetchGate;
        if (options.signal?.aborted) throw new Error("aborted");
        if (this.store.has(path)) return "local" as const;
        if (!this.cache.has(path)) throw new FetchError("missing", `${path} is not in the cache`);
        this.store.add(path);
        return "cache" as const;
      },
      setProfile: async (_profile: string, path: string) => {
        if (this.failing.has("setProfile")) throw new Error("nix-env --set failed: disk full");
        this.profileGenerations.push(path);
        this.profileAt = this.profileGenerations.length;
      },
      switchProfileGeneration: async (_profile: string, generation: number) => {
        if (this.failing.has("switchProfileGeneration"))
          throw new Error("nix-env --switch-generation failed");
        this.profileAt = generation;
      },
      addGcRoot: async () => {
        if (this.failing.has("addGcRoot")) throw new Error("nix-store --add-root failed");
      },
    };
  }

  host() {
    return {
      readCurrent: () => this.current,
      readProfile: () => this.profile(),
      profileGeneration: () => this.profileAt,
      profileGenerationPath: (n: number) => this.profileGenerations[n - 1] ?? null,
      switchScriptProblem: (path: string) =>
        this.store.has(path) ? undefined : `${path}/bin/switch-to-configuration does not exist`,
      checkSwitchLock: async (): Promise<SwitchLockState> => ({ held: this.lockHeld }),
      bootId: () => this.bootId,
    };
  }

  activator(): Activator {
    const find = (h: ActivationHandle) =>
      this.switches.find((s) => s.role === h.role && s.deploymentId === h.statusFile);
    return {
      mode: "direct",
      plan: (r) => ({
        mode: "direct",
        role: r.role,
        path: r.path,
        verb: r.verb ?? "switch",
        // The status file is the fake's key for "this switch" (deployment id and role).
        statusFile: r.deploymentId,
        logFile: `${r.deploymentId}-${r.role}.log`,
        startedAt: 0,
      }),
      start: async (planned) => {
        if (this.failing.has("startSwitch")) throw new Error("systemd-run failed: unit already loaded");
        const rec: SwitchRecord = {
          path: planned.path,
          verb: planned.verb ?? "switch",
          role: planned.role,
          deploymentId: planned.statusFile,
          status: { state: "running" },
          polls: 0,
          queryFailures: 0,
        };
        this.switches.push(rec);
        this.finishSwitch(rec);
        return { ...planned, pid: this.switches.length, startedAt: this.clock };
      },
      status: async (h) => {
        const rec = find(h);
        if (!rec) return { state: "vanished" };
        const b = this.behaviours.get(rec.path) ?? {};
        if (b.queryFailures !== undefined && rec.queryFailures < b.queryFailures) {
          rec.queryFailures++;
          throw new SwitchQueryError(`cannot read the state of nixfleet-switch-${rec.deploymentId}.service`);
        }
        if (
          rec.status.state === "running" &&
          b.endsAfterPolls !== undefined &&
          ++rec.polls >= b.endsAfterPolls
        ) {
          this.land(rec, rec.path);
          rec.status = { state: "exited", code: 0 };
        }
        return rec.status;
      },
      // No files: every wait between looks ends at once (the fake clock moves on each look).
      watch: () => ({
        changed: (_ms, signal, where) =>
          new Promise<void>((resolve, reject) =>
            setImmediate(() => (signal.aborted ? reject(new Parked(where)) : resolve())),
          ),
        close: () => {},
      }),
      stop: async (h) => {
        const rec = find(h);
        if (rec && rec.status.state === "running") rec.status = { state: "exited", code: 143 };
      },
      outputTail: async () => "",
      makeBootDefault: async (path) => {
        if (this.failing.has("bootDefault"))
          throw new Error("switch-to-configuration boot exited with code 1");
        this.boots.push(path);
        this.bootDefault = path;
      },
    };
  }

  health() {
    const snap = (generation: string | null): HealthSnapshot => {
      const passed = generation !== null && this.healthy.has(generation);
      return {
        allPassed: passed,
        results: [
          {
            name: "marker",
            kind: "command",
            passed,
            message: passed ? "ok" : "exit 1",
            durationMs: 1,
            at: this.clock,
          },
        ],
      };
    };
    return {
      runAll: async (generation: string | null) => snap(generation),
      runDue: async (generation: string | null) => snap(generation),
      verify: async (generation: string) => snap(generation),
    };
  }
}

export function testConfig(dbPath: string, overrides: Partial<AgentConfig> = {}): AgentConfig {
  return {
    controlPlaneUrl: ["https://cp.invalid:8443"],
    machineId: "web-01",
    tags: [],
    pollInterval: 60,
    retryInterval: 30,
    healthInterval: 60,
    healthChecks: { systemd: [], http: [], command: [] },
    metricsPort: null,
    metricsAddress: "127.0.0.1",
    dbPath,
    tls: { caCert: null, clientCert: null, clientKey: null },
    allowInsecure: false,
    cacheUrl: "https://cache.invalid",
    dryRun: false,
    protocol: "grpc",
    verifyTimeout: 1,
    activationTimeout: 5,
    activation: "direct",
    activationOrder: "confirm",
    fetchTimeout: 5,
    requestTimeout: 5,
    heartbeatInterval: 30,
    logLevel: "silent",
    paths: {
      currentSystem: "/run/current-system",
      systemProfile: "/profile",
      switchLock: "/lock",
      bootId: "/boot_id",
    },
    ...overrides,
  };
}

/**
 * A Deployer over the World's ports and `journal`. Reports go to the journal's outbox and stay
 * there: the outbox is exactly what the control plane would receive.
 */
export function agentOver(
  world: World,
  journal: Journal,
  options: { afterPersist?: (state: State, dep: Deployment) => void; config?: Partial<AgentConfig> } = {},
): Deployer {
  return new Deployer({
    config: testConfig("unused", options.config),
    journal,
    nix: world.nix(),
    host: world.host(),
    activator: world.activator(),
    health: world.health(),
    reports: {
      report: (init, o) => journal.enqueue(reportRow(init, o)),
      health: (init) => journal.enqueue(healthRow(init)),
      wake: () => {},
    },
    metrics: new AgentMetrics(),
    log: createLogger({ name: "test", level: "silent" }),
    agentVersion: "test",
    gcRootDir: "/gcroots",
    // Time moves on every look at the clock, so timeouts come without real waiting.
    now: () => (world.clock += 100),
    switchPollMs: 1,
    ...(options.afterPersist ? { afterPersist: options.afterPersist } : {}),
  });
}
