/**
 * The three kinds of health check, each with its own timeout: a systemd unit must be `active`,
 * an HTTP GET must return the expected status, a `/bin/sh -c` command must exit 0. When none are
 * configured the built-in check stands in: `systemctl is-system-running` is `running` or
 * `degraded`.
 */
import { get as httpGetPlain } from "node:http";
import { get as httpsGet } from "node:https";
import type { AgentConfig } from "../config.js";
import { describeExit, runCommand } from "../process.js";
import { trimOutput } from "../text.js";

export type CheckKind = "systemd" | "http" | "command";

export interface CheckOutcome {
  passed: boolean;
  /** Why it failed, or a short note when it passed. */
  message: string;
}

export interface CheckResult extends CheckOutcome {
  name: string;
  kind: CheckKind;
  durationMs: number;
  /** When the run finished (ms since the epoch). */
  at: number;
}

export interface HealthCheck {
  name: string;
  kind: CheckKind;
  timeoutMs: number;
  /** How often the periodic reporter re-runs it. */
  intervalMs: number;
  run(signal?: AbortSignal): Promise<CheckOutcome>;
}

/** Where to find systemctl; tests of the systemd check point this at a stand-in. */
export interface CheckEnvironment {
  systemctl: string;
  env?: NodeJS.ProcessEnv;
}

const DEFAULT_ENV: CheckEnvironment = { systemctl: "systemctl" };

export function systemdUnitCheck(
  unit: string,
  timeoutMs: number,
  intervalMs: number,
  environment: CheckEnvironment = DEFAULT_ENV,
): HealthCheck {
  return {
    name: unit,
    kind: "systemd",
    timeoutMs,
    intervalMs,
    async run(signal) {
      const result = await runCommand([environment.systemctl, "is-active", unit], {
        timeoutMs,
        signal,
        env: environment.env,
      });
      const state = result.stdout.trim();
      if (result.code === 0 && state === "active") return { passed: true, message: "active" };
      if (result.spawnError || result.timedOut || result.aborted) {
        return { passed: false, message: `systemctl is-active ${unit} ${describeExit(result, timeoutMs)}` };
      }
      return { passed: false, message: `unit is ${state || "in an unknown state"}, not active` };
    },
  };
}

/** The fallback when no checks are configured. */
export function systemRunningCheck(
  timeoutMs: number,
  intervalMs: number,
  environment: CheckEnvironment = DEFAULT_ENV,
): HealthCheck {
  return {
    name: "systemd-system",
    kind: "systemd",
    timeoutMs,
    intervalMs,
    async run(signal) {
      const result = await runCommand([environment.systemctl, "is-system-running"], {
        timeoutMs,
        signal,
        env: environment.env,
      });
      const state = result.stdout.trim();
      // `degraded` (some unit failed) still counts: the system runs; unit checks are for specifics.
      if (state === "running" || state === "degraded") return { passed: true, message: state };
      if (result.spawnError || result.timedOut || result.aborted) {
        return { passed: false, message: `systemctl is-system-running ${describeExit(result, timeoutMs)}` };
      }
      const detail = trimOutput(result.stderr, 300);
      return {
        passed: false,
        message: `system is ${state || "in an unknown state"}, not running or degraded${detail ? `: ${detail}` : ""}`,
      };
    },
  };
}

/** One GET with node:http(s): no redirect following, no port blocklist (unlike fetch). */
function httpGet(url: string, timeoutMs: number, signal?: AbortSignal): Promise<number> {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const get = target.protocol === "https:" ? httpsGet : httpGetPlain;
    const req = get(
      target,
      { method: "GET", headers: { "user-agent": "nixfleet-agent health check" } },
      (res) => {
        res.resume(); // the body is not inspected
        resolve(res.statusCode ?? 0);
        req.destroy();
      },
    );
    const timer = setTimeout(() => req.destroy(new TimeoutError()), timeoutMs);
    const onAbort = () => req.destroy(new Error("interrupted (agent shutting down)"));
    signal?.addEventListener("abort", onAbort, { once: true });
    req.on("error", reject);
    req.on("close", () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    });
  });
}

class TimeoutError extends Error {}

export function httpCheck(
  url: string,
  expectedStatus: number,
  timeoutMs: number,
  intervalMs: number,
): HealthCheck {
  return {
    name: url,
    kind: "http",
    timeoutMs,
    intervalMs,
    async run(signal) {
      try {
        // Redirects are not followed: a health URL that redirects (e.g. to a login page that
        // answers 200) would otherwise look healthy. Expect the exact status.
        const status = await httpGet(url, timeoutMs, signal);
        if (status === expectedStatus) return { passed: true, message: `HTTP ${status}` };
        return { passed: false, message: `HTTP ${status}, expected ${expectedStatus}` };
      } catch (err) {
        if (err instanceof TimeoutError)
          return { passed: false, message: `no response within ${timeoutMs / 1000} s` };
        const code = (err as NodeJS.ErrnoException).code;
        return { passed: false, message: `request failed: ${code ?? (err as Error).message}` };
      }
    },
  };
}

export function commandCheck(
  name: string,
  command: string,
  timeoutMs: number,
  intervalMs: number,
  env?: NodeJS.ProcessEnv,
): HealthCheck {
  return {
    name,
    kind: "command",
    timeoutMs,
    intervalMs,
    async run(signal) {
      // /bin/sh by absolute path: systemd's PATH has no `sh` (a v0.1 lesson).
      const result = await runCommand(["/bin/sh", "-c", command], {
        timeoutMs,
        signal,
        env,
        maxOutputBytes: 8192,
      });
      if (result.code === 0 && !result.timedOut) return { passed: true, message: "exit 0" };
      const output = trimOutput(result.stderr || result.stdout, 400);
      return { passed: false, message: `${describeExit(result, timeoutMs)}${output ? `: ${output}` : ""}` };
    },
  };
}

/** The checks a configuration asks for, or the built-in one when it asks for none. */
export function checksFromConfig(
  config: Pick<AgentConfig, "healthChecks" | "healthInterval">,
  environment: CheckEnvironment = DEFAULT_ENV,
): HealthCheck[] {
  const checks: HealthCheck[] = [];
  for (const group of config.healthChecks.systemd) {
    for (const unit of group.units) {
      checks.push(systemdUnitCheck(unit, group.timeout * 1000, group.interval * 1000, environment));
    }
  }
  for (const c of config.healthChecks.http) {
    checks.push(httpCheck(c.url, c.expectedStatus, c.timeout * 1000, c.interval * 1000));
  }
  for (const c of config.healthChecks.command) {
    checks.push(commandCheck(c.name, c.command, c.timeout * 1000, c.interval * 1000, environment.env));
  }
  if (checks.length === 0) checks.push(systemRunningCheck(5000, config.healthInterval * 1000, environment));
  return checks;
}
