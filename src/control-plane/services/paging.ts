/**
 * Page sizes and opaque page tokens. A token is base64url JSON of the keyset position after the
 * last item returned; clients treat it as opaque. Sizes above the maximum are clamped (as
 * AIP-158 suggests), 0 means the RPC's default.
 */
import { ValidationError } from "../../common/validation.js";

export function pageSize(requested: number, defaultSize: number, max: number): number {
  if (requested === 0) return defaultSize;
  return Math.min(requested, max);
}

export function encodeToken(position: Record<string, string | number>): string {
  return Buffer.from(JSON.stringify(position), "utf8").toString("base64url");
}

/** Decodes a token whose fields must have the given types; empty token → null. */
export function decodeToken<T extends Record<string, "string" | "number">>(
  token: string,
  shape: T,
): { [K in keyof T]: T[K] extends "string" ? string : number } | null {
  if (token === "") return null;
  const bad = () => new ValidationError("page_token", "is not a token from a previous response of this RPC");
  if (token.length > 512) throw bad();
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw bad();
  }
  if (typeof parsed !== "object" || parsed === null) throw bad();
  for (const [key, type] of Object.entries(shape)) {
    if (typeof (parsed as Record<string, unknown>)[key] !== type) throw bad();
  }
  return parsed as { [K in keyof T]: T[K] extends "string" ? string : number };
}
