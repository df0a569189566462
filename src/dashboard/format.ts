/** How values read on screen: enum names, store paths, times. */
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";

/** "ROLLED_BACK" → "rolled back". */
export function enumLabel(names: Record<number, string>, value: number): string {
  const name = names[value];
  if (!name || name === "UNSPECIFIED") return "—";
  return name.toLowerCase().replaceAll("_", " ");
}

/** /nix/store/<hash>-nixos-system-web-01-24.05 → "nixos-system-web-01-24.05 (abcdefg)". */
export function shortPath(path: string): string {
  if (!path) return "—";
  const m = /^\/nix\/store\/([0-9a-z]{32})-(.+)$/.exec(path);
  if (!m) return path;
  return `${m[2]} (${m[1]!.slice(0, 7)})`;
}

export function date(ts: Timestamp | undefined): Date | null {
  return ts ? timestampDate(ts) : null;
}

export function ago(ts: Timestamp | undefined, now = Date.now()): string {
  const d = date(ts);
  if (!d) return "never";
  const s = Math.round((now - d.getTime()) / 1000);
  if (s < 5) return "just now";
  if (s < 90) return `${s} s ago`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min ago`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function absolute(ts: Timestamp | undefined): string {
  const d = date(ts);
  return d
    ? d
        .toISOString()
        .replace("T", " ")
        .replace(/\.\d+Z$/, " UTC")
    : "";
}

export function duration(seconds: number): string {
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}
