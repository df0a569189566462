/**
 * Nix store path validation. A store path reaches `nix copy`, `nix-env --set` and an exec of
 * `<path>/bin/switch-to-configuration` as root, so anything that is not exactly
 * `/nix/store/<32 nix-base32 chars>-<name>` is refused before it gets near a process.
 */

export const STORE_DIR = "/nix/store";

/** Nix's base32 alphabet: digits and lowercase letters without e, o, t, u. */
const HASH_RE = /^[0123456789abcdfghijklmnpqrsvwxyz]{32}$/;
/** Nix allows [A-Za-z0-9+-._?=] in names; we also refuse `?` (a shell glob) and a leading dot. */
const NAME_RE = /^[A-Za-z0-9+_=-][A-Za-z0-9+._=-]*$/;
/** Nix's own limit on a store path name. */
export const MAX_NAME_LENGTH = 211;
export const MAX_STORE_PATH_LENGTH = STORE_DIR.length + 1 + 32 + 1 + MAX_NAME_LENGTH;

export interface StorePath {
  path: string;
  hash: string;
  name: string;
}

/** Returns why `value` is not a valid top-level store path, or undefined when it is. */
export function storePathProblem(value: string): string | undefined {
  if (typeof value !== "string" || value.length === 0) return "must be a store path, got an empty value";
  if (value.length > MAX_STORE_PATH_LENGTH) {
    return `is ${value.length} characters long; a store path has at most ${MAX_STORE_PATH_LENGTH}`;
  }
  if (!value.startsWith(`${STORE_DIR}/`)) return `must start with ${STORE_DIR}/`;
  const base = value.slice(STORE_DIR.length + 1);
  if (base.includes("/"))
    return "must name a store object itself, not a file inside it (no '/' after the hash)";
  if (base.includes("..")) return "must not contain '..'";
  const dash = base.indexOf("-");
  if (dash !== 32) return "must be /nix/store/<32-character hash>-<name>";
  const hash = base.slice(0, 32);
  if (!HASH_RE.test(hash)) return "hash part must be 32 characters of Nix base32 (0-9 a-z without e o t u)";
  const name = base.slice(33);
  if (name.length === 0) return "name part after the hash must not be empty";
  if (!NAME_RE.test(name)) {
    return "name part may contain only letters, digits and + - . _ = (no whitespace or shell metacharacters) and must not start with '.'";
  }
  return undefined;
}

export function isStorePath(value: string): boolean {
  return storePathProblem(value) === undefined;
}

/** Splits a valid store path; throws with the reason when it is not one. */
export function parseStorePath(value: string): StorePath {
  const problem = storePathProblem(value);
  if (problem !== undefined)
    throw new Error(`invalid store path ${JSON.stringify(value.slice(0, 300))}: ${problem}`);
  const base = value.slice(STORE_DIR.length + 1);
  return { path: value, hash: base.slice(0, 32), name: base.slice(33) };
}
