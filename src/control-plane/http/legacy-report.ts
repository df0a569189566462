/**
 * The v0.1 REST report body (POST /api/v1/machines/{id}/report) and how it maps onto the same
 * records the AgentService uses. v0.1 agents had no outcome field; their fixed messages say
 * what happened ("up-to-date", "applying", "deployed", "rolled back: …", "dry-run: …",
 * "health-check"), so those are translated; anything else keeps no outcome.
 */
import { ValidationError } from "../../common/validation.js";
import { HealthCheckKind, Outcome } from "../../gen/nixfleet/v1/types_pb.js";
import type { HealthInput, ReportInput } from "../store/records.js";

export function legacyOutcome(success: boolean, message: string): Outcome {
  if (message === "up-to-date") return Outcome.UP_TO_DATE;
  if (message === "applying") return Outcome.APPLYING;
  if (message === "deployed") return Outcome.DEPLOYED;
  if (!success && message.startsWith("rolled back")) return Outcome.ROLLED_BACK;
  if (message.startsWith("dry-run")) return Outcome.DRY_RUN;
  return Outcome.UNSPECIFIED;
}

function field<T>(
  body: Record<string, unknown>,
  name: string,
  type: "string" | "boolean" | "number",
  fallback: T,
): T {
  const value = body[name];
  if (value === undefined || value === null) return fallback;
  if (typeof value !== type) throw new ValidationError(name, `must be a ${type}`);
  return value as T;
}

function rfc3339(name: string, value: unknown): number | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== "string") throw new ValidationError(name, "must be an RFC 3339 timestamp string");
  const ms = Date.parse(value);
  if (Number.isNaN(ms))
    throw new ValidationError(name, `${JSON.stringify(value.slice(0, 40))} is not an RFC 3339 timestamp`);
  return ms;
}

// With the u flag a well-formed surrogate pair is one code point; only a lone half matches.
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * The path of the first string (or key) in `value` holding a lone UTF-16 surrogate ("\ud800"):
 * JSON allows the escape, but it is not Unicode text, cannot be stored as UTF-8, and the Connect
 * routes refuse it, so this route refuses it too.
 */
export function loneSurrogatePath(value: unknown, path = "body"): string | null {
  if (typeof value === "string") return LONE_SURROGATE.test(value) ? path : null;
  if (Array.isArray(value)) {
    for (const [i, v] of value.entries()) {
      const bad = loneSurrogatePath(v, `${path}[${i}]`);
      if (bad) return bad;
    }
    return null;
  }
  if (typeof value === "object" && value !== null) {
    for (const [k, v] of Object.entries(value)) {
      const name = path === "body" ? k : `${path}.${k}`;
      if (LONE_SURROGATE.test(k)) return name;
      const bad = loneSurrogatePath(v, name);
      if (bad) return bad;
    }
  }
  return null;
}

/**
 * Maps a parsed v0.1 JSON body to a report and an optional health report for machine `id`
 * (the path wins over the body's machine_id, as in v0.1). Unknown fields are ignored.
 */
export function legacyReport(id: string, body: unknown): { report: ReportInput; health: HealthInput | null } {
  if (typeof body !== "object" || body === null || Array.isArray(body))
    throw new ValidationError("body", "must be a JSON object");
  const invalid = loneSurrogatePath(body);
  if (invalid)
    throw new ValidationError(invalid, "is not valid Unicode text (it contains a lone UTF-16 surrogate)");
  const b = body as Record<string, unknown>;
  const currentGeneration = field(b, "current_generation", "string", "");
  const success = field(b, "success", "boolean", false);
  const message = field(b, "message", "string", "");
  const tagsValue = b["tags"];
  let tags: string[] | null = null;
  if (tagsValue !== undefined && tagsValue !== null) {
    if (!Array.isArray(tagsValue) || tagsValue.some((t) => typeof t !== "string"))
      throw new ValidationError("tags", "must be an array of strings");
    // v0.1 never cleared tags with an empty list; keep that for its agents.
    tags = tagsValue.length ? (tagsValue as string[]) : null;
  }
  const uptime = field(b, "uptime_seconds", "number", 0);
  if (!Number.isInteger(uptime) || uptime < 0)
    throw new ValidationError("uptime_seconds", "must be a whole number ≥ 0");
  const agentTime = rfc3339("timestamp", b["timestamp"]);
  const report: ReportInput = {
    machineId: id,
    currentGeneration,
    desiredGeneration: "",
    desiredRevision: 0,
    outcome: legacyOutcome(success, message),
    success,
    message,
    deploymentId: "",
    tags,
    agentVersion: field(b, "agent_version", "string", ""),
    uptimeSeconds: uptime,
    agentTime,
  };
  let health: HealthInput | null = null;
  const h = b["health"];
  if (h !== undefined && h !== null) {
    if (typeof h !== "object" || Array.isArray(h)) throw new ValidationError("health", "must be an object");
    const hb = h as Record<string, unknown>;
    const results = hb["results"] ?? [];
    if (!Array.isArray(results)) throw new ValidationError("health.results", "must be an array");
    health = {
      machineId: id,
      generation: currentGeneration,
      allPassed: field(hb, "all_passed", "boolean", false),
      results: results.map((r, i) => {
        if (typeof r !== "object" || r === null)
          throw new ValidationError(`health.results[${i}]`, "must be an object");
        const rr = r as Record<string, unknown>;
        const status = rr["status"];
        if (status !== "pass" && status !== "fail")
          throw new ValidationError(`health.results[${i}].status`, 'must be "pass" or "fail"');
        const duration = field(rr, "duration_ms", "number", 0);
        return {
          name: field(rr, "check_name", "string", ""),
          kind: HealthCheckKind.UNSPECIFIED,
          passed: status === "pass",
          durationMs:
            Number.isFinite(duration) && duration >= 0 ? Math.min(Math.round(duration), 0xffffffff) : 0,
          message: field(rr, "message", "string", ""),
        };
      }),
      postApply: false,
      deploymentId: "",
      agentTime: rfc3339("health.timestamp", hb["timestamp"]),
    };
  }
  return { report, health };
}
