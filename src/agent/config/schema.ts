/**
 * The whole configuration as one zod schema (the declarations of options.ts plus the rules that
 * span keys), the type it produces, and the walk over the declarations that lists every option
 * with its key, flag, variable and docs.
 */
import type { z } from "zod";
import { FIELDS, type FieldMeta, objectSchema } from "./fields.js";
import { CONFIG_SHAPE, DOCS, type DocMeta } from "./options.js";

/** Rules between keys; they run only once every key on its own is valid. */
function crossChecks(
  config: z.output<ReturnType<typeof objectSchema<typeof CONFIG_SHAPE>>>,
  ctx: z.RefinementCtx,
) {
  const { tls, controlPlaneUrl, allowInsecure } = config;
  if (Boolean(tls.clientCert) !== Boolean(tls.clientKey)) {
    const [given, missing] = tls.clientCert ? ["clientCert", "clientKey"] : ["clientKey", "clientCert"];
    ctx.addIssue({
      code: "custom",
      path: ["tls", missing],
      message: `is not set but tls.${given} is: give both or neither`,
    });
  }
  if (controlPlaneUrl.some((url) => url.startsWith("http:"))) {
    if (!allowInsecure)
      ctx.addIssue({
        code: "custom",
        path: ["controlPlaneUrl"],
        message: "uses plain http://; use https:// or set allowInsecure (development only)",
      });
    else if (tls.clientCert || tls.caCert)
      // Certificates over plain HTTP would silently not be used: an operator who set them
      // believes the link is authenticated, so refuse instead.
      ctx.addIssue({
        code: "custom",
        path: ["controlPlaneUrl"],
        message: "is http:// but TLS files are configured; use https:// so they are used",
      });
  }
}

export const agentConfigSchema = objectSchema(CONFIG_SHAPE).superRefine(crossChecks);

/** Every duration is in seconds (fractions allowed), as in the NixOS module. */
export type AgentConfig = z.output<typeof agentConfigSchema>;

// ----------------------------------------------------------------------------- the walk

/** One key of the file: a scalar option (with flag and variable) or a file-only list. */
export interface Declaration {
  /** Dotted key in the JSON file ("tls.caCert"). */
  key: string;
  schema: z.core.$ZodType;
  docs: DocMeta;
  /** Scalar options only; file-only lists have none. */
  field: FieldMeta | undefined;
}

function walk(shape: z.ZodRawShape, prefix: string, inherited: Partial<DocMeta> = {}): Declaration[] {
  return Object.entries(shape).flatMap(([name, schema]): Declaration[] => {
    const key = prefix + name;
    const own = DOCS.get(schema);
    if (!own) throw new Error(`agent option ${key} has no documentation`);
    const docs = { ...inherited, ...own };
    if (docs.group) return walk(docs.group, `${key}.`, docs.notInNixModule ? { notInNixModule: true } : {});
    const field = docs.item ? undefined : FIELDS.get(schema);
    if (!docs.item && !field) throw new Error(`agent option ${key} is not declared with a field kind`);
    return [{ key, schema, docs, field }];
  });
}

/** Every key of the file, in declaration order. */
export const DECLARATIONS: readonly Declaration[] = walk(CONFIG_SHAPE, "");

/** "tls.caCert" → "ca-cert": the key's last segment, kebab-case. */
export function flagOf(key: string): string {
  const last = key.slice(key.lastIndexOf(".") + 1);
  return last.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** "tls.caCert" → "NIXFLEET_CA_CERT". */
export function envOf(key: string): string {
  return `NIXFLEET_${flagOf(key).replace(/-/g, "_").toUpperCase()}`;
}
