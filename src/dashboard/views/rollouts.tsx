/** Rollouts, newest first, with their progress; and starting one (deploy role and up). */
import { useState } from "preact/hooks";
import {
  OnFailure,
  type Release,
  type Rollout,
  RolloutStatus,
  RolloutStrategy,
} from "../../gen/nixfleet/v1/fleet_pb.js";
import { Badge, ErrorBox, Loading, Section, When } from "../components.js";
import { enumLabel } from "../format.js";
import { useLoad, useNow } from "../hooks.js";
import { href } from "../router.js";
import { canDeploy, describeError, roleName, type Session } from "../session.js";
import { rolloutTone } from "../tones.js";
import { BatchStrip } from "./batches.js";

export function RolloutsPage({ session }: { session: Session }) {
  const now = useNow();
  // Each rollout carries its batches and machines: fetch the newest few, more on request.
  const [limit, setLimit] = useState(25);
  const list = useLoad(
    (signal) => session.fleet.listRollouts({ pageSize: limit }, { signal }),
    [session, limit],
    5000,
  );
  return (
    <>
      {canDeploy(session) ? (
        <StartRollout session={session} />
      ) : (
        <p class="notice" data-testid="readonly-notice">
          Your key <strong>{session.keyName}</strong> has the {roleName(session.role)} role: you can watch
          rollouts; starting, pausing, resuming and cancelling them needs the deploy role.
        </p>
      )}
      <Section title="Rollouts">
        <ErrorBox error={list.error} />
        {!list.data ? <Loading what="rollouts" /> : null}
        {list.data && list.data.rollouts.length === 0 ? <p class="muted">No rollouts yet.</p> : null}
        {list.data?.rollouts.length ? (
          <table class="grid" data-testid="rollouts-table">
            <thead>
              <tr>
                <th>Rollout</th>
                <th>Status</th>
                <th>Strategy</th>
                <th>Progress</th>
                <th>Release</th>
                <th>Started</th>
                <th>By</th>
              </tr>
            </thead>
            <tbody>
              {list.data.rollouts.map((r) => (
                <RolloutRow key={r.id} r={r} now={now} />
              ))}
            </tbody>
          </table>
        ) : null}
        {list.data?.nextPageToken && limit < 500 ? (
          <button type="button" class="link" onClick={() => setLimit((n) => Math.min(500, n + 25))}>
            Show older rollouts
          </button>
        ) : null}
      </Section>
    </>
  );
}

function RolloutRow({ r, now }: { r: Rollout; now: number }) {
  return (
    <tr data-rollout={r.id}>
      <td>
        <a href={href.rollout(r.id)}>
          <code>{r.id.slice(0, 10)}</code>
        </a>
      </td>
      <td>
        <Badge tone={rolloutTone(r.status)} title={r.statusReason}>
          {enumLabel(RolloutStatus, r.status)}
        </Badge>
      </td>
      <td>{enumLabel(RolloutStrategy, r.strategy)}</td>
      <td>
        <BatchStrip rollout={r} compact />
      </td>
      <td>
        <code title={r.releaseId}>{r.releaseId.slice(0, 12)}</code>
      </td>
      <td>
        <When ts={r.createdAt} now={now} />
      </td>
      <td>{r.createdBy}</td>
    </tr>
  );
}

/** The start form: release, target (tags or hosts), strategy, what to do on failure. */
export function StartRollout({ session, release }: { session: Session; release?: Release }) {
  const releases = useLoad(
    (signal) =>
      release
        ? Promise.resolve([release])
        : session.fleet.listReleases({ pageSize: 50 }, { signal }).then((r) => r.releases),
    [session, release?.id],
  );
  const [open, setOpen] = useState(false);
  const [releaseId, setReleaseId] = useState(release?.id ?? "");
  const [targetKind, setTargetKind] = useState<"tags" | "hosts">("tags");
  const [target, setTarget] = useState("");
  const [strategy, setStrategy] = useState<RolloutStrategy>(RolloutStrategy.CANARY);
  const [batchSizes, setBatchSizes] = useState("1,50%");
  const [onFailure, setOnFailure] = useState<OnFailure>(OnFailure.PAUSE);
  const [healthTimeout, setHealthTimeout] = useState("300");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const chosen = releaseId || releases.data?.[0]?.id || "";
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    const list = target
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
    if (!chosen) return setError("Choose a release.");
    if (list.length === 0) return setError(`Give at least one ${targetKind === "tags" ? "tag" : "host"}.`);
    const seconds = Number(healthTimeout);
    if (!Number.isInteger(seconds) || seconds < 1 || seconds > 86400)
      return setError("Health timeout: a whole number of seconds between 1 and 86400.");
    setBusy(true);
    try {
      const { rollout } = await session.fleet.createRollout({
        releaseId: chosen,
        target: targetKind === "tags" ? { tags: list } : { hosts: list },
        strategy,
        batchSizes:
          strategy === RolloutStrategy.STAGED
            ? batchSizes
                .split(",")
                .map((s) => s.trim())
                .filter(Boolean)
            : [],
        onFailure,
        healthTimeoutSeconds: seconds,
      });
      window.location.hash = href.rollout(rollout!.id);
    } catch (err) {
      setError(describeError(err));
    } finally {
      setBusy(false);
    }
  };

  if (!open)
    return (
      <div class="bar">
        <button type="button" class="primary" onClick={() => setOpen(true)}>
          Start a rollout…
        </button>
      </div>
    );
  return (
    <Section title="Start a rollout">
      <form class="form" onSubmit={submit} data-testid="start-rollout">
        <label>
          Release
          <select
            name="release"
            value={chosen}
            onChange={(e) => setReleaseId((e.target as HTMLSelectElement).value)}
          >
            {(releases.data ?? []).map((r) => (
              <option key={r.id} value={r.id}>
                {r.id} · {r.hostCount} hosts{r.flakeRev ? ` · ${r.flakeRev.slice(0, 8)}` : ""}
              </option>
            ))}
          </select>
        </label>
        <fieldset>
          <legend>Target</legend>
          <label class="check">
            <input
              type="radio"
              name="target"
              checked={targetKind === "tags"}
              onChange={() => setTargetKind("tags")}
            />{" "}
            machines with all these tags
          </label>
          <label class="check">
            <input
              type="radio"
              name="target"
              checked={targetKind === "hosts"}
              onChange={() => setTargetKind("hosts")}
            />{" "}
            these machines
          </label>
          <input
            aria-label="Target"
            name="target-list"
            placeholder={targetKind === "tags" ? "web, eu" : "web-01, web-02"}
            value={target}
            onInput={(e) => setTarget((e.target as HTMLInputElement).value)}
          />
        </fieldset>
        <label>
          Strategy
          <select
            name="strategy"
            value={String(strategy)}
            onChange={(e) => setStrategy(Number((e.target as HTMLSelectElement).value) as RolloutStrategy)}
          >
            <option value={RolloutStrategy.CANARY}>canary: one machine first, then the rest</option>
            <option value={RolloutStrategy.STAGED}>staged: batches of given sizes</option>
            <option value={RolloutStrategy.ALL_AT_ONCE}>all at once</option>
          </select>
        </label>
        {strategy === RolloutStrategy.STAGED ? (
          <label>
            Batch sizes
            <input value={batchSizes} onInput={(e) => setBatchSizes((e.target as HTMLInputElement).value)} />
          </label>
        ) : null}
        <label>
          On failure
          <select
            name="on-failure"
            value={String(onFailure)}
            onChange={(e) => setOnFailure(Number((e.target as HTMLSelectElement).value) as OnFailure)}
          >
            <option value={OnFailure.PAUSE}>pause and wait for an operator</option>
            <option value={OnFailure.REVERT}>revert every machine touched</option>
          </select>
        </label>
        <label>
          Health timeout (seconds)
          <input
            name="health-timeout"
            inputMode="numeric"
            value={healthTimeout}
            onInput={(e) => setHealthTimeout((e.target as HTMLInputElement).value)}
          />
        </label>
        {error ? (
          <div class="error" role="alert">
            {error}
          </div>
        ) : null}
        <div class="bar">
          <button type="submit" class="primary" disabled={busy}>
            {busy ? "Starting…" : "Start rollout"}
          </button>
          <button type="button" onClick={() => setOpen(false)}>
            Close
          </button>
        </div>
      </form>
    </Section>
  );
}
