/**
 * The check step as a transition: the decision (decide.ts) becomes either a steady-state report
 * (throttled: on change, else once per healthInterval) that ends the cycle, or a new deployment.
 */
import type { Desired } from "../decide.js";
import { shouldSendSteadyReport, steadyReportKey } from "../decide.js";
import type { CheckFacts, Effect, ReportSpec, Settings, Step } from "./types.js";

const done = (verdict: "ok" | "failed", ...effects: Effect[]): Step => ({
  state: { at: "done", verdict },
  effects,
});

export function onChecked(f: CheckFacts, s: Settings): Step {
  const { decision, current } = f;
  const d = f.desired as Desired;
  const steady = (
    outcome: string,
    desired: string,
    revision: bigint,
    log: Effect,
    report: ReportSpec,
  ): { effects: Effect[]; sent: boolean; changed: boolean } => {
    const key = steadyReportKey({ outcome, desired, revision, current });
    const changed = f.lastSteady === undefined || f.lastSteady.key !== key;
    if (!shouldSendSteadyReport(f.lastSteady, key, f.now, s.healthIntervalMs))
      return { effects: [], sent: false, changed };
    return { effects: [log, { do: "steady-report", key, outcome, report }], sent: true, changed };
  };
  switch (decision.kind) {
    case "idle": {
      const r = steady(
        "IDLE",
        "",
        0n,
        {
          do: "log",
          level: "info",
          event: "idle",
          msg: "no desired generation assigned; idle",
          fields: { current },
        },
        {
          kind: "report",
          outcome: "UP_TO_DATE",
          success: true,
          message: `no desired generation assigned; running ${current ?? "(current-system missing)"}`,
          deploymentId: "",
        },
      );
      return done("ok", ...r.effects);
    }
    case "invalid": {
      const r = steady(
        "INVALID",
        d.path.slice(0, 300),
        d.revision,
        {
          do: "log",
          level: "error",
          event: "desired_refused",
          msg: decision.reason,
          fields: { error: decision.reason, revision: d.revision.toString() },
        },
        // desired_generation stays empty: the value is not a store path and may not be echoed back.
        {
          kind: "report",
          outcome: "FETCH_FAILED",
          success: false,
          message: `${decision.reason}; nothing was fetched or executed`,
          deploymentId: "",
          desired: { ...d, path: "" },
        },
      );
      return done("failed", ...r.effects);
    }
    case "up-to-date": {
      const r = steady(
        "UP_TO_DATE",
        d.path,
        d.revision,
        {
          do: "log",
          level: "info",
          event: "up_to_date",
          msg: "up to date",
          fields: { generation: d.path, revision: d.revision.toString() },
        },
        {
          kind: "report",
          outcome: "UP_TO_DATE",
          success: true,
          message: `running the desired generation ${d.path}`,
          deploymentId: "",
          desired: d,
        },
      );
      // A rollout gate needs a health report newer than its batch start: on a new assignment
      // of the generation the host already runs, report health at once.
      if (r.sent && r.changed)
        return { state: { at: "health-report" }, effects: [...r.effects, { do: "health-report" }] };
      return done("ok", ...r.effects);
    }
    case "drifted": {
      const r = steady(
        "DRIFTED",
        d.path,
        d.revision,
        {
          do: "log",
          level: "warn",
          event: "drifted",
          msg: "the host no longer runs the generation deployed here; not switching it back",
          fields: { desired: d.path, revision: d.revision.toString(), current },
        },
        {
          kind: "report",
          outcome: "FOREIGN_GENERATION",
          success: false,
          message:
            `current-system points at ${current ?? "nothing"}, not at ${d.path}, which was deployed here ` +
            `(revision ${d.revision}): someone switched this host by hand, or it booted another generation. ` +
            "The agent does not switch it back; assign the generation again (a new rollout, or " +
            "nixfleet machines set-desired) to re-apply it",
          deploymentId: "",
          desired: d,
        },
      );
      return done("ok", ...r.effects);
    }
    case "quarantined": {
      const alarm = f.alarm;
      if (alarm && alarm.desired === d.path) {
        const r = steady(
          "ROLLBACK_FAILED",
          d.path,
          d.revision,
          {
            do: "log",
            level: "error",
            event: "rollback_failed_alarm",
            msg: "the last rollback failed; the host needs an operator",
            fields: { deploymentId: alarm.id, desired: d.path, current },
          },
          {
            kind: "report",
            outcome: "ROLLBACK_FAILED",
            success: false,
            message: alarm.message ?? "rollback failed",
            deploymentId: alarm.id,
            desired: d,
          },
        );
        return done("ok", ...r.effects);
      }
      const entry = decision.entry;
      const r = steady(
        "QUARANTINED",
        d.path,
        d.revision,
        {
          do: "log",
          level: "warn",
          event: "quarantined",
          msg: "desired generation is quarantined; not applying it",
          fields: {
            desired: d.path,
            revision: d.revision.toString(),
            failedRevision: entry.revision.toString(),
          },
        },
        {
          kind: "report",
          outcome: "QUARANTINED",
          success: false,
          message:
            `${d.path} failed here before (revision ${entry.revision}: ${entry.outcome}: ${entry.reason}); ` +
            "not applying it again until the control plane assigns it with a newer revision",
          deploymentId: "",
          desired: d,
        },
      );
      return done("ok", ...r.effects);
    }
    case "deploy": {
      const effects: Effect[] = [];
      if (decision.liftQuarantine) {
        effects.push({ do: "lift-quarantine", path: d.path });
        effects.push({
          do: "log",
          level: "info",
          event: "quarantine_lifted",
          msg: "the control plane assigned a quarantined generation again with a newer revision; trying it",
          fields: {
            desired: d.path,
            revision: d.revision.toString(),
            failedRevision: decision.liftQuarantine.revision.toString(),
          },
        });
      }
      if (s.dryRun) {
        const key = steadyReportKey({ outcome: "DRY_RUN", desired: d.path, revision: d.revision, current });
        if (!shouldSendSteadyReport(f.lastSteady, key, f.now, s.healthIntervalMs))
          return done("ok", ...effects);
      }
      const cacheUrl = d.cacheUrl || s.cacheUrl;
      effects.push({
        do: "persist",
        id: f.newId,
        write: { op: "create", id: f.newId, desired: d, cacheUrl },
      });
      return { state: { at: "create", desired: d, current }, effects };
    }
  }
}
