/**
 * Every machine with its state, sync, generations, health, last contact and push connection;
 * counts on top; filters by tag, state and text. Kept current by WatchFleet — one snapshot, then
 * only what changed — and by polling GetFleetStatus only against a control plane without it.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { useMemo, useRef, useState } from "preact/hooks";
import { type FleetSummary, FleetView } from "../../common/fleet-view.js";
import { HealthState, type MachineStatus } from "../../gen/nixfleet/v1/fleet_pb.js";
import { MachineLifecycle, Outcome } from "../../gen/nixfleet/v1/types_pb.js";
import { Badge, ErrorBox, Loading, Section, StorePath, When } from "../components.js";
import { enumLabel } from "../format.js";
import { useLoad, useNow, useStream } from "../hooks.js";
import { href } from "../router.js";
import type { Session } from "../session.js";
import { healthTone, lifecycleTone, outcomeTone } from "../tones.js";

const STATE_FILTERS = {
  any: { label: "any state", test: () => true },
  active: { label: "active", test: (m: MachineStatus) => m.lifecycle === MachineLifecycle.ACTIVE },
  pending: { label: "pending", test: (m: MachineStatus) => m.lifecycle === MachineLifecycle.PENDING },
  maintenance: {
    label: "maintenance",
    test: (m: MachineStatus) => m.lifecycle === MachineLifecycle.MAINTENANCE,
  },
  decommissioned: {
    label: "decommissioned",
    test: (m: MachineStatus) => m.lifecycle === MachineLifecycle.DECOMMISSIONED,
  },
  "out-of-sync": {
    label: "out of sync",
    test: (m: MachineStatus) => m.desiredGeneration !== "" && !m.inSync,
  },
  unhealthy: { label: "unhealthy", test: (m: MachineStatus) => m.health?.state === HealthState.UNHEALTHY },
  stale: { label: "stale", test: (m: MachineStatus) => m.stale },
  "in-rollout": { label: "in a rollout", test: (m: MachineStatus) => m.activeRolloutId !== "" },
} as const;
type StateFilter = keyof typeof STATE_FILTERS;

async function* nothing(): AsyncIterable<never> {}

/** Rows drawn at once; filters narrow a larger fleet (the counts always cover every machine). */
const MAX_ROWS = 500;
/** Changes come in bursts (a rollout's batch): the page is drawn again at most this often. */
const REDRAW_MS = 250;

interface FleetData extends FleetSummary {
  machines: MachineStatus[];
}

/** The fleet from WatchFleet, resumed after a break; GetFleetStatus polling for an older control plane. */
function useFleet(session: Session): { data: FleetData | undefined; error: unknown; loading: boolean } {
  const view = useRef(new FleetView());
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const [streamed, setStreamed] = useState<FleetData | undefined>(undefined);
  const [streamError, setStreamError] = useState<unknown>(undefined);
  const [polling, setPolling] = useState(false);
  const publish = () => {
    timer.current = undefined;
    setStreamed({ machines: view.current.list(), ...view.current.summary() });
  };
  useStream(
    (signal) => (polling ? nothing() : session.fleet.watchFleet(view.current.resumePoint(), { signal })),
    (msg) => {
      if (view.current.apply(msg) && timer.current === undefined)
        timer.current = setTimeout(publish, REDRAW_MS);
    },
    (err) => {
      if (err && ConnectError.from(err).code === Code.Unimplemented && !view.current.epoch) setPolling(true);
      else setStreamError(err);
    },
    [session, polling],
  );
  const polled = useLoad(
    async (signal) => (polling ? await session.fleet.getFleetStatus({}, { signal }) : undefined),
    [session, polling],
    polling ? 5000 : undefined,
  );
  if (polling) return { data: polled.data, error: polled.error, loading: polled.loading };
  return { data: streamed, error: streamError, loading: streamed === undefined };
}

export function FleetPage({ session }: { session: Session }) {
  const now = useNow();
  const status = useFleet(session);
  const [text, setText] = useState("");
  const [tag, setTag] = useState("");
  const [state, setState] = useState<StateFilter>("any");

  const machines = status.data?.machines ?? [];

  const tags = useMemo(() => [...new Set(machines.flatMap((m) => m.tags))].sort(), [machines]);
  const shown = machines.filter((m) => {
    if (tag && !m.tags.includes(tag)) return false;
    if (!STATE_FILTERS[state].test(m)) return false;
    const q = text.trim().toLowerCase();
    if (!q) return true;
    return [m.machineId, ...m.tags, m.currentGeneration, m.desiredGeneration, m.lastMessage].some((s) =>
      s.toLowerCase().includes(q),
    );
  });

  const s = status.data;
  const unhealthy = machines.filter((m) => m.health?.state === HealthState.UNHEALTHY).length;
  const connected = machines.filter((m) => m.connected).length;
  const assigned = machines.filter((m) => m.desiredGeneration !== "").length;
  return (
    <>
      <div class="counts" data-testid="counts">
        <Count label="machines" value={s?.total} />
        <Count
          label="in sync"
          value={s ? `${s.inSync}/${assigned}` : undefined}
          title="of the machines with an assignment"
        />
        <Count label="healthy" value={s?.healthy} tone="good" />
        <Count label="unhealthy" value={s ? unhealthy : undefined} tone={unhealthy ? "bad" : undefined} />
        <Count label="stale" value={s?.stale} tone={s?.stale ? "warn" : undefined} />
        <Count label="push connected" value={s ? connected : undefined} />
      </div>
      <Section
        title="Fleet"
        actions={
          <div class="filters">
            <input
              type="search"
              aria-label="Filter machines"
              placeholder="Filter: name, tag, generation…"
              value={text}
              onInput={(e) => setText((e.target as HTMLInputElement).value)}
            />
            <select
              aria-label="Tag"
              value={tag}
              onChange={(e) => setTag((e.target as HTMLSelectElement).value)}
            >
              <option value="">any tag</option>
              {tags.map((t) => (
                <option key={t} value={t}>
                  {t}
                </option>
              ))}
            </select>
            <select
              aria-label="State"
              value={state}
              onChange={(e) => setState((e.target as HTMLSelectElement).value as StateFilter)}
            >
              {Object.entries(STATE_FILTERS).map(([k, v]) => (
                <option key={k} value={k}>
                  {v.label}
                </option>
              ))}
            </select>
          </div>
        }
      >
        <ErrorBox error={status.error} />
        {!s && status.loading ? <Loading what="the fleet" /> : null}
        {s && machines.length === 0 ? (
          <p class="muted">No machines yet: they appear when their agents first connect.</p>
        ) : null}
        {machines.length > 0 ? (
          <div class="scroll">
            <table class="grid" data-testid="fleet-table">
              <thead>
                <tr>
                  <th>Machine</th>
                  <th>State</th>
                  <th>Sync</th>
                  <th>Current generation</th>
                  <th>Desired generation</th>
                  <th>Health</th>
                  <th>Last outcome</th>
                  <th>Last seen</th>
                  <th>Push</th>
                </tr>
              </thead>
              <tbody>
                {shown.slice(0, MAX_ROWS).map((m) => (
                  <MachineRow key={m.machineId} m={m} now={now} />
                ))}
              </tbody>
            </table>
            {shown.length === 0 ? <p class="muted">No machine matches these filters.</p> : null}
            {shown.length > MAX_ROWS ? (
              <p class="muted">
                Showing {MAX_ROWS} of {shown.length} machines: narrow them with the filters.
              </p>
            ) : null}
          </div>
        ) : null}
      </Section>
    </>
  );
}

function Count({
  label,
  value,
  tone,
  title,
}: {
  label: string;
  value: number | string | undefined;
  tone?: "good" | "bad" | "warn" | undefined;
  title?: string;
}) {
  return (
    <div class={`count ${tone ? `count-${tone}` : ""}`} title={title}>
      <div class="count-value">{value ?? "–"}</div>
      <div class="count-label">{label}</div>
    </div>
  );
}

function SyncBadge({ m }: { m: MachineStatus }) {
  if (m.desiredGeneration === "") return <Badge tone="muted">nothing assigned</Badge>;
  if (m.inSync) return <Badge tone="good">in sync</Badge>;
  if (m.lastOutcome === Outcome.APPLYING) return <Badge tone="busy">applying</Badge>;
  return <Badge tone="warn">out of sync</Badge>;
}

function MachineRow({ m, now }: { m: MachineStatus; now: number }) {
  const health = m.health?.state ?? HealthState.UNKNOWN;
  return (
    <tr data-machine={m.machineId}>
      <td>
        <a href={href.host(m.machineId)}>{m.machineId}</a>
        <div class="tags">
          {m.tags.map((t) => (
            <span key={t} class="tag">
              {t}
            </span>
          ))}
        </div>
      </td>
      <td>
        <Badge tone={lifecycleTone(m.lifecycle)}>{enumLabel(MachineLifecycle, m.lifecycle)}</Badge>
      </td>
      <td>
        <SyncBadge m={m} />
        {m.activeRolloutId ? (
          <div class="small">
            <a href={href.rollout(m.activeRolloutId)}>rollout b{m.activeBatch + 1}</a>
          </div>
        ) : null}
      </td>
      <td>
        <StorePath path={m.currentGeneration} />
      </td>
      <td>
        <StorePath path={m.desiredGeneration} />
      </td>
      <td>
        <Badge tone={healthTone(health)} title={m.health?.failingChecks.join(", ")}>
          {enumLabel(HealthState, health)}
        </Badge>
        {m.health?.failingChecks.length ? (
          <div class="small bad">{m.health.failingChecks.join(", ")}</div>
        ) : null}
      </td>
      <td>
        <Badge tone={outcomeTone(m.lastOutcome)} title={m.lastMessage}>
          {enumLabel(Outcome, m.lastOutcome)}
        </Badge>
      </td>
      <td class={m.stale ? "warn" : ""}>
        <When ts={m.lastSeen} now={now} />
        {m.stale ? <div class="small">stale</div> : null}
      </td>
      <td>
        {m.connected ? (
          <Badge tone="good" title="holds a Session or Watch stream: gets pushes at once">
            connected
          </Badge>
        ) : (
          <Badge tone="muted" title="no stream: learns of changes when it next polls">
            polling
          </Badge>
        )}
      </td>
    </tr>
  );
}
