/**
 * One machine: what it runs against what it should, its health checks, the reason and switch
 * output of its last failure, and its deployment history (GetMachineHistory).
 */
import { useState } from "preact/hooks";
import type { MachineReport } from "../../gen/nixfleet/v1/fleet_pb.js";
import { HealthCheckKind, MachineLifecycle, Outcome } from "../../gen/nixfleet/v1/types_pb.js";
import { Badge, ErrorBox, Loading, Section, StorePath, When } from "../components.js";
import { absolute, duration, enumLabel } from "../format.js";
import { useLoad, useNow } from "../hooks.js";
import { href } from "../router.js";
import type { Session } from "../session.js";
import { lifecycleTone, outcomeTone } from "../tones.js";

export function HostPage({ session, id }: { session: Session; id: string }) {
  const now = useNow();
  const data = useLoad(
    async (signal) => {
      // Per-machine calls only: the page stays cheap however large the fleet is.
      const [machine, history] = await Promise.all([
        session.fleet.getMachine({ machineId: id }, { signal }),
        session.fleet.getMachineHistory({ machineId: id, pageSize: 100 }, { signal }),
      ]);
      return { machine: machine.machine!, history };
    },
    [session, id],
    5000,
  );
  const [showChecks, setShowChecks] = useState(false);

  if (!data.data) return data.error ? <ErrorBox error={data.error} /> : <Loading what={id} />;
  const { machine: m, history } = data.data;
  const reports = history.reports;
  const lastFailure = reports.find((r) => FAILURES.has(r.outcome) && r.message);
  const shownReports = collapseRepeats(
    showChecks ? reports : reports.filter((r) => r.outcome !== Outcome.UP_TO_DATE),
  );
  const health = history.latestHealth;
  const desired = m.desiredGeneration?.hash ?? "";

  return (
    <>
      <p class="crumbs">
        <a href={href.fleet()}>Fleet</a> / {m.machineId}
      </p>
      <ErrorBox error={data.error} />
      <div class="cols">
        <Section title={m.machineId}>
          <dl class="facts">
            <dt>State</dt>
            <dd>
              <Badge tone={lifecycleTone(m.lifecycle)}>{enumLabel(MachineLifecycle, m.lifecycle)}</Badge>
            </dd>
            <dt>Tags</dt>
            <dd>{m.tags.length ? m.tags.join(", ") : <span class="muted">none</span>}</dd>
            <dt>Last seen</dt>
            <dd>
              <When ts={m.lastSeen} now={now} />
            </dd>
            <dt>Push</dt>
            <dd>
              {m.connected ? <Badge tone="good">connected</Badge> : <Badge tone="muted">polling</Badge>}
            </dd>
            <dt>Agent</dt>
            <dd>
              {m.agentVersion || "—"}
              {m.uptimeSeconds ? <span class="muted"> · up {duration(Number(m.uptimeSeconds))}</span> : null}
            </dd>
          </dl>
        </Section>
        <Section title="Runs vs should">
          <dl class="facts" data-testid="runs-vs-should">
            <dt>Runs</dt>
            <dd>
              <StorePath path={m.currentGeneration} />
            </dd>
            <dt>Should run</dt>
            <dd>{desired ? <StorePath path={desired} /> : <span class="muted">nothing assigned</span>}</dd>
            <dt>Sync</dt>
            <dd>
              <SyncLine desired={desired} current={m.currentGeneration} />
            </dd>
            {m.desiredGeneration?.rolloutId ? (
              <>
                <dt>Assigned by</dt>
                <dd>
                  <a href={href.rollout(m.desiredGeneration.rolloutId)}>{m.desiredGeneration.rolloutId}</a>
                  <span class="muted"> · revision {String(m.desiredGeneration.revision)}</span>
                </dd>
              </>
            ) : null}
            <dt>Last outcome</dt>
            <dd>
              <Badge tone={outcomeTone(m.lastOutcome)}>{enumLabel(Outcome, m.lastOutcome)}</Badge>
            </dd>
          </dl>
        </Section>
      </div>

      <Section title="Health checks">
        {health ? (
          <>
            <p class="muted small">
              Latest report <When ts={health.receivedAt} now={now} /> on{" "}
              <StorePath path={health.generation} />
              {health.postApply ? " (verification right after a switch)" : ""}
            </p>
            <table class="grid" data-testid="health-checks">
              <thead>
                <tr>
                  <th>Check</th>
                  <th>Kind</th>
                  <th>Result</th>
                  <th>Took</th>
                  <th>Message</th>
                </tr>
              </thead>
              <tbody>
                {health.results.map((c) => (
                  <tr key={c.name}>
                    <td>{c.name}</td>
                    <td>{enumLabel(HealthCheckKind, c.kind)}</td>
                    <td>{c.passed ? <Badge tone="good">passed</Badge> : <Badge tone="bad">failed</Badge>}</td>
                    <td>{c.durationMs} ms</td>
                    <td class="msg">{c.message}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </>
        ) : (
          <p class="muted">No health report received yet.</p>
        )}
      </Section>

      {lastFailure ? (
        <Section title="Last failure: reason and switch output">
          <p class="small">
            <Badge tone={outcomeTone(lastFailure.outcome)}>{enumLabel(Outcome, lastFailure.outcome)}</Badge>{" "}
            <When ts={lastFailure.receivedAt} now={now} /> deploying{" "}
            <StorePath path={lastFailure.desiredGeneration} />
          </p>
          <pre class="output" data-testid="last-failure">
            {lastFailure.message}
          </pre>
        </Section>
      ) : null}

      <Section
        title="Deployment history"
        actions={
          <label class="check">
            <input
              type="checkbox"
              checked={showChecks}
              onChange={(e) => setShowChecks((e.target as HTMLInputElement).checked)}
            />{" "}
            show up-to-date checks
          </label>
        }
      >
        {shownReports.length === 0 ? (
          <p class="muted">No deployments reported{reports.length ? " (only up-to-date checks)" : ""}.</p>
        ) : (
          <table class="grid" data-testid="history">
            <thead>
              <tr>
                <th>When</th>
                <th>Outcome</th>
                <th>Generation</th>
                <th>Reason</th>
              </tr>
            </thead>
            <tbody>
              {shownReports.map(({ report, times }, i) => (
                <HistoryRow key={`${report.deploymentId}-${i}`} r={report} times={times} now={now} />
              ))}
            </tbody>
          </table>
        )}
        <p class="muted small">Reports older than the control plane's --report-retention are pruned.</p>
      </Section>
    </>
  );
}

function SyncLine({ desired, current }: { desired: string; current: string }) {
  if (!desired) return <Badge tone="muted">nothing assigned</Badge>;
  if (desired === current) return <Badge tone="good">in sync</Badge>;
  return <Badge tone="warn">out of sync</Badge>;
}

/**
 * Outcomes that carry the reason a deployment went wrong (and, for switches, its output).
 * QUARANTINED is left out: it only repeats that an earlier attempt failed.
 */
const FAILURES = new Set([
  Outcome.ROLLED_BACK,
  Outcome.ROLLBACK_FAILED,
  Outcome.APPLY_FAILED,
  Outcome.FETCH_FAILED,
  Outcome.SWITCH_LOCKED,
]);

/** Consecutive identical reports (a quarantine noted on every check) shown once, with a count. */
function collapseRepeats(reports: MachineReport[]): { report: MachineReport; times: number }[] {
  const rows: { report: MachineReport; times: number }[] = [];
  for (const r of reports) {
    const last = rows[rows.length - 1];
    if (
      last &&
      last.report.outcome === r.outcome &&
      last.report.desiredGeneration === r.desiredGeneration &&
      last.report.message === r.message
    )
      last.times++;
    else rows.push({ report: r, times: 1 });
  }
  return rows;
}

function HistoryRow({ r, times, now }: { r: MachineReport; times: number; now: number }) {
  return (
    <tr>
      <td title={absolute(r.receivedAt)}>
        <When ts={r.receivedAt} now={now} />
      </td>
      <td>
        <Badge tone={outcomeTone(r.outcome)}>{enumLabel(Outcome, r.outcome)}</Badge>
        {times > 1 ? <span class="muted small"> ×{times}</span> : null}
      </td>
      <td>
        <StorePath path={r.desiredGeneration || r.currentGeneration} />
      </td>
      <td class="msg">
        {r.message ? <pre class="output small">{r.message}</pre> : <span class="muted">—</span>}
      </td>
    </tr>
  );
}
