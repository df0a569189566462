/** Building the deploy cycle from the configuration: the real ports (Nix, host, activation, health). */
import { join } from "node:path";
import type { Logger } from "../common/logger.js";
import { createActivator } from "./activation.js";
import type { AgentConfig } from "./config.js";
import type { HostOps, ReportSink } from "./cycle/ports.js";
import { Deployer } from "./deployer.js";
import { type CheckEnvironment, checksFromConfig } from "./health/checks.js";
import { HealthRunner } from "./health/runner.js";
import {
  checkSwitchLock,
  profileGeneration,
  profileGenerationPath,
  readBootId,
  readSystemLink,
  switchScriptProblem,
} from "./host.js";
import type { Journal } from "./journal/journal.js";
import type { AgentMetrics } from "./metrics.js";
import { Nix } from "./nix.js";
import { KILL_AFTER_ENV, killAfterHook } from "./test-hooks.js";
import { AGENT_VERSION } from "./version.js";

export function hostOps(paths: AgentConfig["paths"]): HostOps {
  return {
    readCurrent: () => readSystemLink(paths.currentSystem),
    readProfile: () => readSystemLink(paths.systemProfile),
    profileGeneration: () => profileGeneration(paths.systemProfile),
    profileGenerationPath: (n) => profileGenerationPath(paths.systemProfile, n),
    switchScriptProblem,
    checkSwitchLock: () => checkSwitchLock(paths.switchLock),
    bootId: () => readBootId(paths.bootId),
  };
}

export function createDeployer(o: {
  config: AgentConfig;
  journal: Journal;
  reports: ReportSink;
  metrics: AgentMetrics;
  log: Logger;
  stateDir: string;
  env: NodeJS.ProcessEnv | undefined;
  checkEnvironment: CheckEnvironment | undefined;
}): { deployer: Deployer; health: HealthRunner } {
  const { config, env } = o;
  const health = new HealthRunner(
    checksFromConfig(config, o.checkEnvironment ?? { systemctl: "systemctl", ...(env ? { env } : {}) }),
    o.metrics,
  );
  const hook = killAfterHook((env ?? process.env)[KILL_AFTER_ENV], o.log);
  const deployer = new Deployer({
    config,
    journal: o.journal,
    nix: new Nix(env),
    host: hostOps(config.paths),
    activator: createActivator(config.activation, join(o.stateDir, "activations"), env),
    health,
    reports: o.reports,
    metrics: o.metrics,
    log: o.log,
    agentVersion: AGENT_VERSION,
    gcRootDir: join(o.stateDir, "gcroots"),
    ...(hook ? { afterPersist: hook } : {}),
  });
  return { deployer, health };
}
