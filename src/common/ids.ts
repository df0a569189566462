/**
 * Identifier rules. Machine ids are host names and client-certificate CNs; they end up in log
 * lines, metric-free audit records, systemd unit names and file names, so the charset is tight.
 */

export const MAX_ID_LENGTH = 128;
const MACHINE_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const TAG_RE = /^[A-Za-z0-9][A-Za-z0-9._:=-]*$/;
export const MAX_TAG_LENGTH = 64;
export const MAX_TAGS = 64;
const KEY_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
export const MAX_KEY_NAME_LENGTH = 64;
const UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
const RELEASE_ID_RE = new RegExp(`^rel-${UUID}$`);
const ROLLOUT_ID_RE = new RegExp(`^r-${UUID}$`);

function tokenProblem(
  value: string,
  what: string,
  re: RegExp,
  max: number,
  charset: string,
): string | undefined {
  if (typeof value !== "string" || value.length === 0) return `${what} must not be empty`;
  if (value.length > max) return `${what} is ${value.length} characters long; at most ${max} allowed`;
  if (!re.test(value)) return `${what} ${JSON.stringify(value.slice(0, 80))} may contain only ${charset}`;
  return undefined;
}

export function machineIdProblem(value: string): string | undefined {
  return tokenProblem(
    value,
    "machine id",
    MACHINE_ID_RE,
    MAX_ID_LENGTH,
    "letters, digits, '.', '_' and '-', starting with a letter or digit",
  );
}

export function tagProblem(value: string): string | undefined {
  return tokenProblem(
    value,
    "tag",
    TAG_RE,
    MAX_TAG_LENGTH,
    "letters, digits, '.', '_', ':', '=' and '-', starting with a letter or digit",
  );
}

/** Validates a tag list; returns the reason and the offending index. */
export function tagsProblem(tags: readonly string[]): { index: number; reason: string } | undefined {
  if (tags.length > MAX_TAGS)
    return { index: MAX_TAGS, reason: `at most ${MAX_TAGS} tags allowed, got ${tags.length}` };
  for (const [index, tag] of tags.entries()) {
    const reason = tagProblem(tag);
    if (reason !== undefined) return { index, reason };
  }
  return undefined;
}

/** Sorted and de-duplicated, so equal tag sets compare equal. */
export function normalizeTags(tags: readonly string[]): string[] {
  return [...new Set(tags)].sort();
}

export function keyNameProblem(value: string): string | undefined {
  return tokenProblem(
    value,
    "key name",
    KEY_NAME_RE,
    MAX_KEY_NAME_LENGTH,
    "letters, digits, '.', '_' and '-', starting with a letter or digit",
  );
}

export function releaseIdProblem(value: string): string | undefined {
  if (!value) return "release id must not be empty";
  return RELEASE_ID_RE.test(value)
    ? undefined
    : `release id ${JSON.stringify(value.slice(0, 80))} is not of the form rel-<uuid>`;
}

export function rolloutIdProblem(value: string): string | undefined {
  if (!value) return "rollout id must not be empty";
  return ROLLOUT_ID_RE.test(value)
    ? undefined
    : `rollout id ${JSON.stringify(value.slice(0, 80))} is not of the form r-<uuid>`;
}
