/**
 * The declarations as the rest of the agent uses them: the option table (`--help`, flags and
 * variables), the defaults, and how a default reads in docs and help.
 */

import type { z } from "zod";
import type { FieldMeta, Kind } from "./fields.js";
import { FIELDS } from "./fields.js";
import { COMMAND_CHECK, HTTP_CHECK, SYSTEMD_CHECK } from "./options.js";
import { DECLARATIONS, type Declaration, envOf, flagOf } from "./schema.js";

export interface OptionSpec {
  /** Dotted key in the JSON file. */
  key: string;
  /** Flag without the leading dashes. */
  flag: string;
  env: string;
  kind: Kind;
  choices?: readonly string[];
  /** Plain text for `--help`: the notes of the reference and the default. */
  help: string;
  /** Flag or variable text → the value the file would hold. */
  fromText: (text: string) => unknown;
}

/** A default as the docs show it: `60 s`, `false`, `"0.0.0.0"`, none. */
export function defaultText(field: FieldMeta | undefined): string {
  if (!field) return "`[]`";
  if (field.defaultText !== undefined) return field.defaultText;
  const value = field.default;
  if (value === null || value === undefined) return "none";
  if (field.kind === "duration") return `${value} s`;
  if (typeof value === "boolean" || typeof value === "number") return String(value);
  return `\`${Array.isArray(value) ? JSON.stringify(value) : String(value)}\``;
}

/** Markdown to the plain text of `--help`. */
export function plain(markdown: string): string {
  return markdown.replace(/`/g, "");
}

function spec(d: Declaration & { field: FieldMeta }): OptionSpec {
  return {
    key: d.key,
    flag: flagOf(d.key),
    env: envOf(d.key),
    kind: d.field.kind,
    ...(d.field.kind === "enum" && d.field.choices ? { choices: d.field.choices } : {}),
    help: plain(`${d.docs.doc} (default: ${defaultText(d.field)})`),
    fromText: d.field.fromText,
  };
}

/** Every option a flag or variable can set; health checks are lists of records, file only. */
export const OPTIONS: readonly OptionSpec[] = DECLARATIONS.filter(
  (d): d is Declaration & { field: FieldMeta } => d.field !== undefined,
).map(spec);

function defaultsOf(shape: z.ZodRawShape): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, schema] of Object.entries(shape)) {
    const meta = FIELDS.get(schema as z.ZodType);
    if (meta?.default !== undefined) out[name] = meta.default;
  }
  return out;
}

/** The declared defaults: top-level and `paths.*` keys by their last segment, checks by kind. */
export const DEFAULTS: Readonly<Record<string, unknown>> & {
  readonly http: Readonly<Record<string, unknown>>;
  readonly command: Readonly<Record<string, unknown>>;
  readonly systemd: Readonly<Record<string, unknown>>;
} = {
  ...Object.fromEntries(
    DECLARATIONS.filter((d) => d.field?.default !== undefined).map((d) => [
      d.key.slice(d.key.lastIndexOf(".") + 1),
      d.field!.default,
    ]),
  ),
  http: defaultsOf(HTTP_CHECK),
  command: defaultsOf(COMMAND_CHECK),
  systemd: defaultsOf(SYSTEMD_CHECK),
};
