/** Rendering for humans (tables, words, relative times) and for scripts (--json). */
import type { DescEnum, DescMessage, MessageShape } from "@bufbuild/protobuf";
import { toJson } from "@bufbuild/protobuf";
import { type Timestamp, timestampMs } from "@bufbuild/protobuf/wkt";
import Table from "cli-table3";
import { UsageError } from "./errors.js";

export interface Output {
  json: boolean;
  out(line: string): void;
  err(line: string): void;
}

export function consoleOutput(json: boolean): Output {
  return {
    json,
    out: (line) => process.stdout.write(`${line}\n`),
    err: (line) => process.stderr.write(`${line}\n`),
  };
}

/** Prints a response message as protobuf JSON (enum names, camelCase fields, RFC 3339 times). */
export function printJson<D extends DescMessage>(o: Output, schema: D, message: MessageShape<D>): void {
  o.out(JSON.stringify(toJson(schema, message), null, 2));
}

export function table(head: string[], rows: string[][]): string {
  const t = new Table({
    head,
    style: { head: [], border: [], compact: true },
    chars: {
      top: "",
      "top-mid": "",
      "top-left": "",
      "top-right": "",
      bottom: "",
      "bottom-mid": "",
      "bottom-left": "",
      "bottom-right": "",
      left: "",
      "left-mid": "",
      mid: "",
      "mid-mid": "",
      right: "",
      "right-mid": "",
      middle: "  ",
    },
  });
  t.push(...rows);
  return t
    .toString()
    .split("\n")
    .map((l) => l.replace(/^ /, "").trimEnd())
    .join("\n");
}

/** "MACHINE_LIFECYCLE_ACTIVE" → "active"; "ROLLOUT_STRATEGY_ALL_AT_ONCE" → "all-at-once". */
export function enumWord(schema: DescEnum, value: number): string {
  const v = schema.values.find((x) => x.number === value);
  // Protobuf enums are open: a newer control plane or agent may send a value this CLI lacks.
  if (!v) return `UNKNOWN(${value})`;
  if (v.number === 0) return "-";
  return v.localName.toLowerCase().replace(/_/g, "-");
}

/** Parses a user's word for an enum value ("all-at-once", "ALL_AT_ONCE", "all_at_once"). */
export function parseEnumWord(schema: DescEnum, word: string, flag: string): number {
  const wanted = word.trim().toUpperCase().replace(/-/g, "_");
  const v = schema.values.find((x) => x.number !== 0 && (x.localName === wanted || x.name === wanted));
  if (!v) {
    const choices = schema.values.filter((x) => x.number !== 0).map((x) => enumWord(schema, x.number));
    throw new UsageError(`${flag} must be one of ${choices.join(", ")}; got ${JSON.stringify(word)}`);
  }
  return v.number;
}

export function enumChoices(schema: DescEnum): string[] {
  return schema.values.filter((x) => x.number !== 0).map((x) => enumWord(schema, x.number));
}

/** "/nix/store/0c8vxs2ja1k5…-nixos-system-web-01" → "0c8vxs2j…-nixos-system-web-01". */
export function shortPath(path: string): string {
  if (!path) return "-";
  const m = /^\/nix\/store\/([0-9a-z]{32})-(.*)$/.exec(path);
  return m ? `${m[1]!.slice(0, 8)}…-${m[2]}` : path;
}

export function ago(ts: Timestamp | undefined, now = Date.now()): string {
  if (!ts) return "never";
  const s = Math.max(0, Math.round((now - timestampMs(ts)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function isoTime(ts: Timestamp | undefined): string {
  return ts ? new Date(timestampMs(ts)).toISOString().replace(/\.\d{3}Z$/, "Z") : "-";
}

export function duration(seconds: number): string {
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${seconds % 60 ? `${seconds % 60}s` : ""}`;
  return `${Math.floor(seconds / 3600)}h${Math.floor((seconds % 3600) / 60)}m`;
}
