/**
 * What changes per host between two releases (from = older, to = newer). Every list is sorted
 * by hostname.
 */
import type { ReleaseEntryRecord } from "../store/records.js";

export interface ReleaseDiff {
  added: ReleaseEntryRecord[];
  removed: ReleaseEntryRecord[];
  changed: { hostname: string; fromStorePath: string; toStorePath: string }[];
  unchanged: string[];
}

export function diffReleases(
  from: readonly ReleaseEntryRecord[],
  to: readonly ReleaseEntryRecord[],
): ReleaseDiff {
  const before = new Map(from.map((e) => [e.hostname, e]));
  const after = new Map(to.map((e) => [e.hostname, e]));
  const byHost = (a: { hostname: string }, b: { hostname: string }) =>
    a.hostname < b.hostname ? -1 : a.hostname > b.hostname ? 1 : 0;
  const diff: ReleaseDiff = { added: [], removed: [], changed: [], unchanged: [] };
  for (const [host, entry] of after) {
    const old = before.get(host);
    if (!old) diff.added.push(entry);
    else if (old.storePath !== entry.storePath)
      diff.changed.push({ hostname: host, fromStorePath: old.storePath, toStorePath: entry.storePath });
    else diff.unchanged.push(host);
  }
  for (const [host, entry] of before) if (!after.has(host)) diff.removed.push(entry);
  diff.added.sort(byHost);
  diff.removed.sort(byHost);
  diff.changed.sort(byHost);
  diff.unchanged.sort();
  return diff;
}
