/**
 * The kinds of value an agent option can hold. Each kind is a zod schema (the validation, with an
 * error message an operator can act on) plus what the option table, the flags and the docs need
 * to know about it, kept in `FIELDS`: how a flag or `NIXFLEET_*` text becomes the JSON value the
 * file would hold, the default, and how to show that default.
 *
 * Messages are ours, not zod's: they say what is expected and echo what was given ("must be true
 * or false, got \"yes\""), and the caller adds the key and where it came from.
 */
import * as z from "zod";
import { DURATION_HINT, parseDuration } from "../../common/duration.js";
import { machineIdProblem, normalizeTags, tagsProblem } from "../../common/ids.js";
import { isLogLevel, LOG_LEVELS } from "../../common/logger.js";
import { cacheUrlProblem } from "../cache-url.js";

/** How a flag takes its value: a switch (`--dry-run`) or a value (`--poll-interval 30s`). */
export type Kind =
  | "string"
  | "duration"
  | "bool"
  | "port"
  | "tags"
  | "urls"
  | "enum"
  | "nullableString"
  | "level"
  | "integer";

export interface FieldMeta {
  kind: Kind;
  /** The value when the key is absent; undefined when the field is required or computed. */
  default?: unknown;
  /** How the docs show a default that is not a plain value ("the host name", "required"). */
  defaultText?: string;
  choices?: readonly string[];
  /** Flag or variable text → the JSON value the file would hold (validated by the schema). */
  fromText: (text: string) => unknown;
}

/** Every field's metadata, looked up by its schema (the declaration tables walk it). */
export const FIELDS = z.registry<FieldMeta>();

/** The longest duration accepted anywhere: a week, far beyond any sane setting. */
export const MAX_DURATION_SECONDS = 7 * 24 * 3600;
const MAX_STRING = 4096;

/** A value as an error message shows it: JSON, cut at 80 characters. */
export function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

const asText = (text: string): unknown => text;
const emptyIsNull = (text: string): unknown => (text === "" ? null : text);

function declare<S extends z.ZodType>(schema: S, meta: FieldMeta): S {
  FIELDS.add(schema as z.ZodType, meta);
  return schema;
}

/** A fresh copy per parse, so no parsed config shares an array with the defaults. */
function withDefault<S extends z.ZodType>(schema: S, value: z.output<S>) {
  return schema.default(() => structuredClone(value) as never);
}

// ----------------------------------------------------------------------------- base schemas

/** A non-empty string of at most 4096 characters; `missing` is the message when absent or null. */
export function textSchema(missing?: string) {
  return z
    .string({
      error: (iss) =>
        iss.input == null && missing ? missing : `must be a string, got ${describe(iss.input)}`,
    })
    .min(1, { error: "must not be empty" })
    .max(MAX_STRING, { error: `is longer than ${MAX_STRING} characters` });
}

function absolutePathSchema() {
  return textSchema()
    .refine((p) => p.startsWith("/"), {
      error: (iss) => `must be an absolute path, got ${describe(iss.input)}`,
    })
    .refine((p) => !p.includes("\0"), { error: "must not contain NUL" });
}

/** Seconds as a number, or a string with a unit ("500ms", "30s", "5m", "1d"): the shared parser. */
export function durationSchema() {
  const hint = `must be ${DURATION_HINT}`;
  return z
    .union([z.number(), z.string()], { error: (iss) => `${hint}, got ${describe(iss.input)}` })
    .transform((value, ctx) => {
      const seconds = typeof value === "number" && value < 0 ? value : parseDuration(value);
      if (seconds === undefined) {
        ctx.issues.push({ code: "custom", input: value, message: `${hint}, got ${describe(value)}` });
        return z.NEVER;
      }
      return seconds;
    })
    .pipe(
      z
        .number()
        .gt(0, { error: (iss) => `must be more than zero seconds, got ${describe(iss.input)}` })
        .max(MAX_DURATION_SECONDS, { error: `must be at most ${MAX_DURATION_SECONDS} seconds (a week)` }),
    );
}

export function integerSchema(min: number, max: number) {
  const message = (iss: { input?: unknown }) =>
    `must be an integer from ${min} to ${max}, got ${describe(iss.input)}`;
  return z.number({ error: message }).int({ error: message }).min(min, { error: message }).max(max, {
    error: message,
  });
}

export function listSchema<S extends z.ZodType>(item: S) {
  return z.array(item, { error: (iss) => `must be a JSON array, got ${describe(iss.input)}` });
}

/** A JSON object that refuses unknown keys, suggesting the camelCase spelling of a snake_case one. */
export function objectSchema<Shape extends z.ZodRawShape>(shape: Shape) {
  const known = Object.keys(shape);
  return z.strictObject(shape, {
    error: (iss) => {
      if (iss.code === "unrecognized_keys") {
        const key = iss.keys[0] ?? "";
        const camel = key.replace(/[_-]([a-z])/g, (_m, c: string) => c.toUpperCase());
        return camel !== key && known.includes(camel)
          ? `unknown key; did you mean "${camel}"?`
          : `unknown key; known keys: ${known.join(", ")}`;
      }
      return `must be a JSON object, got ${describe(iss.input)}`;
    },
  });
}

// ----------------------------------------------------------------------------- option kinds

export function duration(seconds: number) {
  return declare(withDefault(durationSchema(), seconds), {
    kind: "duration",
    default: seconds,
    fromText: asText,
  });
}

export function integer(min: number, max: number, value: number) {
  return declare(withDefault(integerSchema(min, max), value), {
    kind: "integer",
    default: value,
    fromText: (text) => (Number.isFinite(Number(text)) ? Number(text) : text),
  });
}

export function bool(value: boolean) {
  const schema = z.boolean({ error: (iss) => `must be true or false, got ${describe(iss.input)}` });
  return declare(withDefault(schema, value), {
    kind: "bool",
    default: value,
    // Unrecognised text stays text, so the schema refuses it naming the variable it came from.
    fromText: (text) => {
      const t = text.trim().toLowerCase();
      if (["1", "true", "yes", "on"].includes(t)) return true;
      if (["0", "false", "no", "off", ""].includes(t)) return false;
      return text;
    },
  });
}

export function text(value: string) {
  return declare(withDefault(textSchema(), value), { kind: "string", default: value, fromText: asText });
}

export function absolutePath(value: string) {
  return declare(withDefault(absolutePathSchema(), value), {
    kind: "string",
    default: value,
    fromText: asText,
  });
}

export function nullablePath() {
  return declare(withDefault(absolutePathSchema().nullable(), null), {
    kind: "nullableString",
    default: null,
    fromText: emptyIsNull,
  });
}

export function choice<const T extends readonly [string, ...string[]]>(choices: T, value: T[number]) {
  const schema = z.enum(choices, {
    error: (iss) => `must be one of ${choices.join(", ")}, got ${describe(iss.input)}`,
  });
  return declare(withDefault(schema, value as z.output<typeof schema>), {
    kind: "enum",
    default: value,
    choices,
    fromText: asText,
  });
}

/** A port, or null for "no listener"; 0 asks for any free port. */
export function nullablePort() {
  return declare(withDefault(integerSchema(0, 65535).nullable(), null), {
    kind: "port",
    default: null,
    fromText: (text) => {
      const t = text.trim();
      if (t === "" || t === "null") return null;
      return Number.isFinite(Number(t)) ? Number(t) : text;
    },
  });
}

export function logLevel(value: string) {
  const schema = textSchema().refine(isLogLevel, {
    error: (iss) => `must be one of ${LOG_LEVELS.join(", ")}, got ${describe(iss.input)}`,
  });
  // No `choices`: a bad --log-level is a configuration error (78) like a bad file value, not a
  // usage error.
  return declare(withDefault(schema as z.ZodType<string, string>, value), {
    kind: "level",
    default: value,
    fromText: asText,
  });
}

export function tags() {
  const schema = listSchema(textSchema()).transform((list, ctx) => {
    const problem = tagsProblem(list);
    if (problem) {
      ctx.issues.push({ code: "custom", input: list, path: [problem.index], message: problem.reason });
      return z.NEVER;
    }
    return normalizeTags(list);
  });
  return declare(withDefault(schema, []), {
    kind: "tags",
    default: [],
    fromText: (text) =>
      text
        .split(",")
        .map((t) => t.trim())
        .filter(Boolean),
  });
}

/** The operator's own binary cache: any Nix store URL, trusted as written (see cache-url.ts). */
export function cacheUrl() {
  const schema = textSchema()
    .superRefine((url, ctx) => {
      const problem = cacheUrlProblem(url, { fromControlPlane: false });
      if (problem) ctx.addIssue({ code: "custom", message: problem });
    })
    .nullable();
  return declare(withDefault(schema, null), { kind: "nullableString", default: null, fromText: emptyIsNull });
}

/** Unset (absent or null) means the host name, which must then be a valid machine id too. */
export function machineId(hostname: () => string) {
  const schema = textSchema()
    .nullish()
    .transform((given, ctx) => {
      const id = given ?? hostname();
      const problem = machineIdProblem(id);
      if (problem) {
        const message = given == null ? `is not set and the host name cannot be used: ${problem}` : problem;
        ctx.issues.push({ code: "custom", input: given, message });
        return z.NEVER;
      }
      return id;
    });
  return declare(schema, { kind: "string", defaultText: "the host name", fromText: asText });
}

/** More URLs than any HA layout needs: a longer list is a mistake (a pasted host list?). */
export const MAX_CONTROL_PLANE_URLS = 16;

/**
 * One control-plane base URL, normalised: no trailing slash (Connect appends
 * "/nixfleet.v1.AgentService/Method"). Whether plain http:// is allowed depends on allowInsecure,
 * so that check is the whole config's (schema.ts).
 */
function oneControlPlaneUrl() {
  return textSchema().transform((text, ctx) => {
    const fail = (message: string) => {
      ctx.issues.push({ code: "custom", input: text, message });
      return z.NEVER;
    };
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      return fail(`is not a URL: ${describe(text)}`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:")
      return fail(`must be an https:// URL, got scheme ${url.protocol}`);
    if (url.search || url.hash) return fail("must not contain a query string or fragment");
    if (url.username || url.password)
      return fail("must not contain credentials; the agent authenticates with mTLS");
    return url.toString().replace(/\/+$/, "");
  });
}

/**
 * The control plane's URLs, in the order they are tried (src/common/failover-transport.ts): one URL (a
 * single control plane or one load-balanced name) or several replicas. A single string is still
 * accepted, as before lists existed; flags and variables take a comma-separated list. Always a
 * list once parsed. Errors in a single string name the key alone, in a list the entry.
 */
export function controlPlaneUrl() {
  const one = oneControlPlaneUrl();
  const schema = z.unknown().transform((given, ctx): string[] => {
    const fail = (message: string) => {
      ctx.issues.push({ code: "custom", input: given, message });
      return z.NEVER;
    };
    if (given == null) return fail("is required (e.g. https://fleet.example.com:8443)");
    const list = typeof given === "string" ? [given] : given;
    if (!Array.isArray(list)) return fail(`must be a URL or a JSON array of URLs, got ${describe(given)}`);
    if (list.length === 0) return fail("must list at least one URL");
    if (list.length > MAX_CONTROL_PLANE_URLS)
      return fail(`lists ${list.length} URLs; at most ${MAX_CONTROL_PLANE_URLS} are allowed`);
    const urls: string[] = [];
    list.forEach((item: unknown, i) => {
      const path = typeof given === "string" ? [] : [i];
      const parsed = one.safeParse(item);
      if (!parsed.success) {
        for (const issue of parsed.error.issues)
          ctx.issues.push({ code: "custom", input: item, path, message: issue.message });
      } else if (urls.includes(parsed.data)) {
        ctx.issues.push({ code: "custom", input: item, path, message: `lists ${parsed.data} twice` });
      } else urls.push(parsed.data);
    });
    return urls;
  });
  return declare(schema, {
    kind: "urls",
    defaultText: "required",
    fromText: (text) => {
      const parts = text
        .split(",")
        .map((t) => t.trim())
        .filter(Boolean);
      return parts.length === 1 ? parts[0] : parts;
    },
  });
}
