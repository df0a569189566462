/** Releases, newest first; pick two to see what changes between them; start a rollout of one. */
import { useState } from "preact/hooks";
import type { Release } from "../../gen/nixfleet/v1/fleet_pb.js";
import { ErrorBox, Loading, Section, StorePath, When } from "../components.js";
import { useLoad, useNow } from "../hooks.js";
import { canDeploy, type Session } from "../session.js";
import { StartRollout } from "./rollouts.js";

export function ReleasesPage({ session }: { session: Session }) {
  const now = useNow();
  const list = useLoad(
    (signal) => session.fleet.listReleases({ pageSize: 100 }, { signal }),
    [session],
    10000,
  );
  const [from, setFrom] = useState("");
  const [to, setTo] = useState("");
  const [open, setOpen] = useState<Release | null>(null);
  const releases = list.data?.releases ?? [];
  return (
    <>
      <Section title="Releases">
        <ErrorBox error={list.error} />
        {!list.data ? <Loading what="releases" /> : null}
        {list.data && releases.length === 0 ? (
          <p class="muted">
            No releases yet: <code>nixfleet release create</code> makes one.
          </p>
        ) : null}
        {releases.length ? (
          <table class="grid" data-testid="releases-table">
            <thead>
              <tr>
                <th title="diff from">From</th>
                <th title="diff to">To</th>
                <th>Release</th>
                <th>Hosts</th>
                <th>Flake</th>
                <th>Created</th>
                <th>By</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {releases.map((r) => (
                <tr key={r.id} data-release={r.id}>
                  <td>
                    <input
                      type="radio"
                      name="from"
                      aria-label={`diff from ${r.id}`}
                      checked={from === r.id}
                      onChange={() => setFrom(r.id)}
                    />
                  </td>
                  <td>
                    <input
                      type="radio"
                      name="to"
                      aria-label={`diff to ${r.id}`}
                      checked={to === r.id}
                      onChange={() => setTo(r.id)}
                    />
                  </td>
                  <td>
                    <code>{r.id}</code>
                  </td>
                  <td>{r.hostCount}</td>
                  <td>
                    {r.flakeRef ? <code>{r.flakeRef}</code> : <span class="muted">—</span>}
                    {r.flakeRev ? <span class="muted"> @ {r.flakeRev.slice(0, 10)}</span> : null}
                  </td>
                  <td>
                    <When ts={r.createdAt} now={now} />
                  </td>
                  <td>{r.createdBy}</td>
                  <td>
                    <button type="button" class="link" onClick={() => setOpen(open?.id === r.id ? null : r)}>
                      {open?.id === r.id ? "hide" : "entries"}
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        ) : null}
      </Section>
      {open ? <Entries session={session} release={open} /> : null}
      {from && to ? <Diff session={session} from={from} to={to} /> : null}
    </>
  );
}

function Entries({ session, release }: { session: Session; release: Release }) {
  return (
    <>
      <Section title={`Release ${release.id}`}>
        <table class="grid">
          <thead>
            <tr>
              <th>Host</th>
              <th>Store path</th>
              <th>Platform</th>
            </tr>
          </thead>
          <tbody>
            {release.entries.map((e) => (
              <tr key={e.hostname}>
                <td>{e.hostname}</td>
                <td>
                  <StorePath path={e.storePath} />
                </td>
                <td>{e.platform || "—"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </Section>
      {canDeploy(session) ? <StartRollout session={session} release={release} /> : null}
    </>
  );
}

function Diff({ session, from, to }: { session: Session; from: string; to: string }) {
  const diff = useLoad(
    (signal) => session.fleet.diffReleases({ fromReleaseId: from, toReleaseId: to }, { signal }),
    [session, from, to],
  );
  const d = diff.data;
  return (
    <Section title="Diff">
      <p class="muted small">
        from <code>{from}</code> to <code>{to}</code>
      </p>
      <ErrorBox error={diff.error} />
      {!d ? <Loading what="the diff" /> : null}
      {d ? (
        <table class="grid" data-testid="diff">
          <tbody>
            {d.changed.map((c) => (
              <tr key={`c-${c.hostname}`} class="changed">
                <td>changed</td>
                <td>{c.hostname}</td>
                <td>
                  <StorePath path={c.fromStorePath} /> → <StorePath path={c.toStorePath} />
                </td>
              </tr>
            ))}
            {d.added.map((e) => (
              <tr key={`a-${e.hostname}`} class="added">
                <td>added</td>
                <td>{e.hostname}</td>
                <td>
                  <StorePath path={e.storePath} />
                </td>
              </tr>
            ))}
            {d.removed.map((e) => (
              <tr key={`r-${e.hostname}`} class="removed">
                <td>removed</td>
                <td>{e.hostname}</td>
                <td>
                  <StorePath path={e.storePath} />
                </td>
              </tr>
            ))}
            {d.unchanged.length ? (
              <tr class="muted">
                <td>unchanged</td>
                <td colSpan={2}>{d.unchanged.join(", ")}</td>
              </tr>
            ) : null}
          </tbody>
        </table>
      ) : null}
    </Section>
  );
}
