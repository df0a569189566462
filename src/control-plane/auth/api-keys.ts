/**
 * API key secrets: "nfk-" + 64 hex characters (256 random bits), shown once and stored only as
 * the SHA-256 of the whole string. Roles are ordered readonly < deploy < admin.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import type { Role } from "../store/records.js";

const SECRET_RE = /^nfk-[0-9a-f]{64}$/;

export const ROLES: readonly Role[] = ["readonly", "deploy", "admin"];

export function generateSecret(): string {
  return `nfk-${randomBytes(32).toString("hex")}`;
}

export function newKeyId(): string {
  return `key-${randomUUID()}`;
}

export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret, "utf8").digest("hex");
}

export function isWellFormedSecret(value: string): boolean {
  return SECRET_RE.test(value);
}

export function roleAtLeast(role: Role, needed: Role): boolean {
  return ROLES.indexOf(role) >= ROLES.indexOf(needed);
}

export type BearerParse = { ok: true; secret: string } | { ok: false; reason: string };

/** Reads `Authorization: Bearer nfk-…`; says what is wrong without echoing the value. */
export function parseBearer(header: string | null): BearerParse {
  if (header === null || header.trim() === "")
    return { ok: false, reason: "missing API key: send 'Authorization: Bearer nfk-…'" };
  const m = /^Bearer[ \t]+(\S+)\s*$/i.exec(header.trim());
  if (!m) return { ok: false, reason: "malformed Authorization header: expected 'Bearer nfk-…'" };
  const secret = m[1]!;
  if (!isWellFormedSecret(secret))
    return {
      ok: false,
      reason: "malformed API key: expected 'nfk-' followed by 64 lowercase hex characters",
    };
  return { ok: true, secret };
}
