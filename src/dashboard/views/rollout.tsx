/**
 * One rollout, live: WatchRollout sends a snapshot and then every event with the rollout after
 * it, so the batches, verdicts and event list move as the fleet does. Pause, resume and cancel
 * (optionally reverting) for deploy keys; the server checks the role again.
 */
import { useState } from "preact/hooks";
import {
  type BatchMachine,
  BatchStatus,
  MachineGateState,
  OnFailure,
  type Rollout,
  type RolloutBatch,
  type RolloutEvent,
  RolloutEventType,
  RolloutStatus,
  RolloutStrategy,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import { Badge, ErrorBox, Loading, Section, StorePath, When } from "../components.js";
import { enumLabel } from "../format.js";
import { useLoad, useNow, useStream } from "../hooks.js";
import { href } from "../router.js";
import { canDeploy, describeError, roleName, type Session } from "../session.js";
import { batchTone, gateTone, rolloutTone } from "../tones.js";
import { BatchStrip } from "./batches.js";

export function RolloutPage({ session, id }: { session: Session; id: string }) {
  const now = useNow();
  // Events before the watch began come from GetRollout; the watch adds the rest.
  const initial = useLoad((signal) => session.fleet.getRollout({ rolloutId: id }, { signal }), [session, id]);
  const [live, setLive] = useState<Rollout | null>(null);
  const [more, setMore] = useState<RolloutEvent[]>([]);
  const [streamError, setStreamError] = useState<unknown>(undefined);
  const [watching, setWatching] = useState(false);
  useStream(
    (signal) => session.fleet.watchRollout({ rolloutId: id }, { signal }),
    (msg) => {
      setWatching(true);
      if (msg.rollout) setLive(msg.rollout);
      const event = msg.event;
      if (event) setMore((list) => (list.some((e) => e.id === event.id) ? list : [...list, event]));
    },
    (err) => {
      setStreamError(err);
      if (err) setWatching(false);
    },
    [session, id],
  );

  const rollout = live ?? initial.data?.rollout;
  if (!rollout)
    return initial.error ? <ErrorBox error={initial.error} /> : <Loading what={`rollout ${id}`} />;
  const known = new Set((initial.data?.events ?? []).map((e) => e.id));
  const events = [...(initial.data?.events ?? []), ...more.filter((e) => !known.has(e.id))];
  const active = rollout.status === RolloutStatus.RUNNING || rollout.status === RolloutStatus.PAUSED;

  return (
    <>
      <p class="crumbs">
        <a href={href.rollouts()}>Rollouts</a> / <code>{rollout.id}</code>
      </p>
      <Section
        title="Rollout"
        actions={
          active ? (
            watching ? (
              <Badge tone="busy" title="updates arrive as they happen (WatchRollout)">
                live
              </Badge>
            ) : (
              <Badge tone="muted">reconnecting…</Badge>
            )
          ) : null
        }
      >
        <div class="headline">
          <Badge tone={rolloutTone(rollout.status)}>
            <span data-testid="rollout-status">{enumLabel(RolloutStatus, rollout.status)}</span>
          </Badge>
          {rollout.statusReason ? (
            <span class="reason" data-testid="rollout-reason">
              {rollout.statusReason}
            </span>
          ) : null}
        </div>
        <dl class="facts inline">
          <dt>Release</dt>
          <dd>
            <code>{rollout.releaseId}</code>
          </dd>
          <dt>Target</dt>
          <dd>
            {rollout.target?.tags.length
              ? `tags ${rollout.target.tags.join(", ")}`
              : `hosts ${rollout.target?.hosts.join(", ")}`}
          </dd>
          <dt>Strategy</dt>
          <dd>
            {enumLabel(RolloutStrategy, rollout.strategy)} ({rollout.batchSizes.join(", ")})
          </dd>
          <dt>On failure</dt>
          <dd>
            {enumLabel(OnFailure, rollout.onFailure)}, tolerating {rollout.failureThreshold || "0"}
          </dd>
          <dt>Started</dt>
          <dd>
            <When ts={rollout.createdAt} now={now} /> by {rollout.createdBy}
          </dd>
        </dl>
        <ErrorBox error={streamError} />
        {canDeploy(session) ? (
          active ? (
            <Actions session={session} rollout={rollout} onChange={setLive} />
          ) : null
        ) : (
          <p class="notice small" data-testid="readonly-notice">
            Read-only: your key has the {roleName(session.role)} role; pausing, resuming and cancelling need
            deploy.
          </p>
        )}
      </Section>

      <Section title="Batches">
        <BatchStrip rollout={rollout} />
        <table class="grid" data-testid="verdicts">
          <thead>
            <tr>
              <th>Batch</th>
              <th>Machine</th>
              <th>Verdict</th>
              <th>Reason</th>
              <th>Target generation</th>
            </tr>
          </thead>
          <tbody>
            {verdictRows(rollout).map(({ b, m }) => (
              <tr key={m.machineId} data-machine={m.machineId}>
                <td>
                  <Badge tone={batchTone(b.status)}>
                    b{b.index + 1} {enumLabel(BatchStatus, b.status)}
                  </Badge>
                </td>
                <td>
                  <a href={href.host(m.machineId)}>{m.machineId}</a>
                </td>
                <td>
                  <Badge tone={b.status === BatchStatus.PENDING ? "muted" : gateTone(m.state)}>
                    {b.status === BatchStatus.PENDING ? "not started" : enumLabel(MachineGateState, m.state)}
                  </Badge>
                </td>
                <td class="msg">{m.reason}</td>
                <td>
                  <StorePath path={m.targetGeneration} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        {machineCount(rollout) > MAX_VERDICT_ROWS ? (
          <p class="muted small">
            Showing {MAX_VERDICT_ROWS} of {machineCount(rollout)} machines, unhealthy and undecided first;{" "}
            <code>nixfleet rollout status {rollout.id} --json</code> lists all.
          </p>
        ) : null}
      </Section>

      <Section title="Events">
        <ol class="events" data-testid="events">
          {[...events].reverse().map((e) => (
            <li key={String(e.id)}>
              <When ts={e.createdAt} now={now} /> <strong>{enumLabel(RolloutEventType, e.type)}</strong>
              {e.batchIndex !== undefined ? ` b${e.batchIndex + 1}` : ""}
              {e.machineId ? (
                <>
                  {" "}
                  <a href={href.host(e.machineId)}>{e.machineId}</a>
                </>
              ) : null}
              {e.message ? <span class="msg">: {e.message}</span> : null}
              <span class="muted small"> · {e.actor}</span>
            </li>
          ))}
        </ol>
      </Section>
    </>
  );
}

/** Verdict rows drawn at most; a big rollout shows the ones needing attention first. */
const MAX_VERDICT_ROWS = 500;

const machineCount = (r: Rollout) => r.batches.reduce((n, b) => n + b.machines.length, 0);

function verdictRows(r: Rollout): { b: RolloutBatch; m: BatchMachine }[] {
  const rows = r.batches.flatMap((b) => b.machines.map((m) => ({ b, m })));
  if (rows.length <= MAX_VERDICT_ROWS) return rows;
  const rank = ({ b, m }: { b: RolloutBatch; m: BatchMachine }) =>
    m.state === MachineGateState.UNHEALTHY ? 0 : b.status === BatchStatus.DEPLOYING ? 1 : 2;
  return rows.sort((x, y) => rank(x) - rank(y)).slice(0, MAX_VERDICT_ROWS);
}

function Actions({
  session,
  rollout,
  onChange,
}: {
  session: Session;
  rollout: Rollout;
  onChange: (r: Rollout) => void;
}) {
  const [revert, setRevert] = useState(true);
  const [confirming, setConfirming] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const run = async (what: () => Promise<{ rollout?: Rollout | undefined }>) => {
    setBusy(true);
    setError(null);
    try {
      const r = await what();
      if (r.rollout) onChange(r.rollout);
      setConfirming(false);
    } catch (err) {
      setError(describeError(err));
    } finally {
      setBusy(false);
    }
  };
  const id = rollout.id;
  return (
    <div class="actions" data-testid="rollout-actions">
      {rollout.status === RolloutStatus.RUNNING ? (
        <button
          type="button"
          disabled={busy}
          onClick={() =>
            run(() => session.fleet.pauseRollout({ rolloutId: id, reason: "paused from the dashboard" }))
          }
        >
          Pause
        </button>
      ) : (
        <button
          type="button"
          class="primary"
          disabled={busy}
          onClick={() => run(() => session.fleet.resumeRollout({ rolloutId: id }))}
        >
          Resume
        </button>
      )}
      {confirming ? (
        <span class="confirm">
          <label class="check">
            <input
              type="checkbox"
              checked={revert}
              onChange={(e) => setRevert((e.target as HTMLInputElement).checked)}
            />{" "}
            revert the machines it touched to their previous generation
          </label>
          <button
            type="button"
            class="danger"
            disabled={busy}
            onClick={() =>
              run(() =>
                session.fleet.cancelRollout({
                  rolloutId: id,
                  revert,
                  reason: "cancelled from the dashboard",
                }),
              )
            }
          >
            Confirm cancel
          </button>
          <button type="button" onClick={() => setConfirming(false)}>
            Keep it
          </button>
        </span>
      ) : (
        <button type="button" class="danger" disabled={busy} onClick={() => setConfirming(true)}>
          Cancel…
        </button>
      )}
      {error ? (
        <div class="error" role="alert">
          {error}
        </div>
      ) : null}
    </div>
  );
}
