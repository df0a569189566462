/**
 * Every agent option, declared once. The shapes below are the JSON file's structure; each field
 * carries its validation (fields.ts), its default and its documentation. Everything else is
 * derived from them: the flag (`--poll-interval`) and variable (`NIXFLEET_POLL_INTERVAL`) from the
 * key's last segment, the `--help` text, the options reference in docs/operations-agent.md
 * (test/agent/config-reference.ts), the defaults, and the type `AgentConfig`. The NixOS module's options are
 * checked against these declarations by test/nix/agent-module.test.ts.
 */
import { hostname } from "node:os";
import * as z from "zod";
import { LOG_LEVELS } from "../../common/logger.js";
import {
  absolutePath,
  bool,
  cacheUrl,
  choice,
  controlPlaneUrl,
  describe,
  duration,
  integer,
  listSchema,
  logLevel,
  machineId,
  nullablePath,
  nullablePort,
  objectSchema,
  tags,
  text,
  textSchema,
} from "./fields.js";

export const PROTOCOLS = ["grpc", "connect", "connect-json"] as const;
export type Protocol = (typeof PROTOCOLS)[number];

export const ACTIVATION_MODES = ["systemd-run", "direct"] as const;
export type ActivationMode = (typeof ACTIVATION_MODES)[number];

/**
 * `confirm`: activate with `switch-to-configuration test`, verify, and only then make the new
 * generation the boot default (profile + `boot`) — a reboot during verification boots the
 * previous one. `switch`: profile first, then `switch` (the boot default changes before
 * verification; a reboot then boots the unproven generation).
 */
export const ACTIVATION_ORDERS = ["confirm", "switch"] as const;
export type ActivationOrder = (typeof ACTIVATION_ORDERS)[number];

/** What the docs say about a key; `group` and `item` tell the walkers how to descend. */
export interface DocMeta {
  /** Markdown, one line: the notes column of the reference (and `--help`, without backticks). */
  doc: string;
  /** A nested object of options (tls, paths, healthChecks): its fields, walked with a prefix. */
  group?: z.ZodRawShape;
  /** A list that exists only in the file (health checks): the fields of one entry. */
  item?: z.ZodRawShape;
  /** Not a NixOS module option: exists to sandbox a host in tests and the demo. */
  notInNixModule?: boolean;
}

/** A WeakMap rather than a zod registry: zod rewrites schema-valued metadata types. */
export const DOCS = new WeakMap<z.core.$ZodType, DocMeta>();

function doc<S extends z.ZodType>(schema: S, text: string, extra: Omit<DocMeta, "doc"> = {}): S {
  DOCS.set(schema, { doc: text, ...extra });
  return schema;
}

/** A nested object of options; null or absent means all its defaults. */
function group<Shape extends z.ZodRawShape>(
  shape: Shape,
  text: string,
  extra: Omit<DocMeta, "doc"> = {},
  refine?: (value: z.output<z.ZodObject<Shape>>, ctx: z.RefinementCtx) => void,
) {
  const object = objectSchema(shape);
  const checked = refine ? object.superRefine(refine) : object;
  return doc(
    z.preprocess((v) => v ?? {}, checked),
    text,
    { ...extra, group: shape },
  );
}

/** A list of records that only the file can give (no flag or variable). */
function fileList<Shape extends z.ZodRawShape>(shape: Shape, text: string) {
  return doc(
    listSchema(objectSchema(shape)).default(() => []),
    text,
    { item: shape },
  );
}

// ----------------------------------------------------------------------------- health checks

const unitName = textSchema().refine((u) => /^[A-Za-z0-9:_.@\\-]+$/.test(u) && !u.startsWith("-"), {
  error: (iss) => `is not a systemd unit name: ${describe(iss.input)}`,
});

const checkUrl = textSchema()
  // The URL is the check's name in health reports, which allow 512 characters.
  .max(512, { error: "must be at most 512 characters" })
  .superRefine((url, ctx) => {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      ctx.addIssue({ code: "custom", message: `is not a URL: ${describe(url)}` });
      return;
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:")
      ctx.addIssue({ code: "custom", message: `must be an http:// or https:// URL, got ${describe(url)}` });
  });

export const SYSTEMD_CHECK = {
  units: z.preprocess((v) => v ?? [], listSchema(unitName).min(1, { error: "must list at least one unit" })),
  timeout: duration(5),
  interval: duration(10),
};

export const HTTP_CHECK = {
  url: checkUrl,
  expectedStatus: integer(100, 599, 200),
  timeout: duration(3),
  interval: duration(5),
};

export const COMMAND_CHECK = {
  name: textSchema().max(128, { error: "must be at most 128 characters" }),
  command: textSchema(),
  timeout: duration(5),
  interval: duration(10),
};

/** Every name a check reports under must be unique: units for systemd checks, URLs for HTTP ones. */
function uniqueCheckNames(
  checks: { systemd: { units: string[] }[]; http: { url: string }[]; command: { name: string }[] },
  ctx: z.RefinementCtx,
): void {
  const named: [(string | number)[], string][] = [
    ...checks.systemd.flatMap((c, i) =>
      c.units.map((u, j): [(string | number)[], string] => [["systemd", i, "units", j], u]),
    ),
    ...checks.http.map((c, i): [(string | number)[], string] => [["http", i, "url"], c.url]),
    ...checks.command.map((c, i): [(string | number)[], string] => [["command", i, "name"], c.name]),
  ];
  const seen = new Set<string>();
  for (const [path, name] of named) {
    if (seen.has(name))
      ctx.addIssue({
        code: "custom",
        path,
        message: `check name ${describe(name)} is used twice; names must be unique`,
      });
    seen.add(name);
  }
}

const healthChecks = group(
  {
    systemd: fileList(
      SYSTEMD_CHECK,
      '`units` are `["nginx.service", …]`; each unit must be `active` (`systemctl is-active`)',
    ),
    http: fileList(HTTP_CHECK, "GET `url`; exact status, redirects not followed"),
    command: fileList(COMMAND_CHECK, "run with `/bin/sh -c`, exit 0 = healthy"),
  },
  "health checks",
  {},
  uniqueCheckNames,
);

// ----------------------------------------------------------------------------- the options

/** The JSON file's structure, in the order of the reference and `--help`. */
export const CONFIG_SHAPE = {
  controlPlaneUrl: doc(
    controlPlaneUrl(),
    "`https://host:port[/prefix]`, or several (a JSON list; comma-separated in a flag or variable) tried in order, moving on when one is unreachable; `http://` only with `allowInsecure`; no credentials or query",
  ),
  machineId: doc(
    machineId(hostname),
    "1–128 of `[A-Za-z0-9._-]`; must equal the client certificate's CN (checked at start)",
  ),
  tags: doc(
    tags(),
    "comma-separated in a flag or variable; sent with every report, they replace the machine's tags on the control plane",
  ),
  pollInterval: doc(duration(60), "steady state, when the control plane gives no `poll_hint`"),
  retryInterval: doc(
    duration(30),
    "after a failed cycle (control plane unreachable, fetch, apply, rollback, lock held)",
  ),
  healthInterval: doc(
    duration(60),
    "periodic health reports; also the longest a steady state (UP_TO_DATE, QUARANTINED, ROLLBACK_FAILED) goes unreported",
  ),
  healthChecks,
  metricsPort: doc(
    nullablePort(),
    "Prometheus listener; `0` = any free port (logged as `metrics_listening`); unset = no listener",
  ),
  metricsAddress: doc(text("0.0.0.0"), "bind address of the metrics listener"),
  dbPath: doc(
    absolutePath("/var/lib/nixfleet/state.db"),
    "the journal; its directory also holds `activations/` and `gcroots/` — keep it on persistent storage",
  ),
  tls: group(
    {
      caCert: doc(nullablePath(), "PEM CA(s) for the control plane's certificate (else the system roots)"),
      clientCert: doc(nullablePath(), "PEM client certificate (CN = `machineId`); give `tls.clientKey` too"),
      clientKey: doc(
        nullablePath(),
        "PEM private key of the client certificate, matching it; give `tls.clientCert` too",
      ),
    },
    "mTLS files",
  ),
  allowInsecure: doc(
    bool(false),
    "plain HTTP, development only (logged as a warning); TLS files with `http://` are refused",
  ),
  cacheUrl: doc(
    cacheUrl(),
    "used when the control plane names no cache; any Nix store URL (`https`, `http`, `file`, `s3`, `ssh`, `ssh-ng`), query settings allowed",
  ),
  dryRun: doc(bool(false), "check and fetch, never apply; reports `DRY_RUN`"),
  protocol: doc(
    choice(PROTOCOLS, "grpc"),
    "`grpc` (HTTP/2, Session push) · `connect` (Connect binary, HTTP/2, Session) · `connect-json` (HTTP/1.1 through proxies: polling + Watch)",
  ),
  verifyTimeout: doc(duration(120), "how long health checks may take to pass after a switch"),
  activationTimeout: doc(
    duration(600),
    "a switch running longer is killed and rolled back; also bounds waiting for someone else's switch lock during a rollback",
  ),
  activation: doc(
    choice(ACTIVATION_MODES, "systemd-run"),
    "`systemd-run`: a transient unit `nixfleet-switch-<deployment>` · `direct`: a detached process group (hosts without systemd, tests)",
  ),
  activationOrder: doc(
    choice(ACTIVATION_ORDERS, "confirm"),
    "`confirm`: `switch-to-configuration test`, verify, then profile + `boot` — a power cut or reboot while verifying boots the previous generation (`ROLLED_BACK_BY_REBOOT`) · `switch`: profile + `switch` first — a reboot while verifying boots the unproven generation",
  ),
  fetchTimeout: doc(duration(600), "hard limit for `nix copy` / `nix path-info`"),
  requestTimeout: doc(duration(30), "one unary call to the control plane"),
  heartbeatInterval: doc(duration(30), "Session heartbeats and HTTP/2 PINGs"),
  logLevel: doc(logLevel("info"), LOG_LEVELS.join(", ")),
  paths: group(
    {
      currentSystem: doc(
        absolutePath("/run/current-system"),
        "the current-system symlink; `paths.*` exist to sandbox a host (tests, demo)",
      ),
      systemProfile: doc(absolutePath("/nix/var/nix/profiles/system"), "the system profile"),
      switchLock: doc(
        absolutePath("/run/nixos/switch-to-configuration.lock"),
        "switch-to-configuration's lock file",
      ),
      bootId: doc(
        absolutePath("/proc/sys/kernel/random/boot_id"),
        "the kernel's boot id: a different one after a restart means the host rebooted",
      ),
    },
    "host paths",
    { notInNixModule: true },
  ),
};
