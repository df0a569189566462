/**
 * Control-plane-specific input rules (the shared ones — ids, tags, store paths — live in
 * src/common). Each returns a reason or undefined, and callers name the field.
 */

export const MAX_CACHE_URL_LENGTH = 1024;
export const MAX_MESSAGE_BYTES = 4096;
export const MAX_AGENT_VERSION_LENGTH = 128;
export const MAX_DEPLOYMENT_ID_LENGTH = 128;
export const MAX_HEALTH_RESULTS = 256;
export const MAX_CHECK_NAME_LENGTH = 512;
export const MAX_FLAKE_REF_LENGTH = 1024;
export const MAX_FLAKE_REV_LENGTH = 128;
export const MAX_PLATFORM_LENGTH = 64;
export const MAX_REASON_LENGTH = 1024;

// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it rejects
const CONTROL_RE = /[\u0000-\u001f\u007f]/;
const SCHEME_RE = /^[a-z][a-z0-9+.-]*:\/\//;
const DEPLOYMENT_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]*$/;
const PLATFORM_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** A binary cache URL handed to `nix copy --from`: scheme://…, no whitespace or control characters. */
export function cacheUrlProblem(value: string): string | undefined {
  if (value.length > MAX_CACHE_URL_LENGTH)
    return `is ${value.length} characters long; at most ${MAX_CACHE_URL_LENGTH} allowed`;
  if (CONTROL_RE.test(value) || /\s/.test(value)) return "must not contain whitespace or control characters";
  if (!SCHEME_RE.test(value))
    return `${JSON.stringify(value.slice(0, 80))} is not a URL (expected e.g. https://cache.example.org, file:///srv/cache, s3://bucket)`;
  try {
    new URL(value);
  } catch {
    return `${JSON.stringify(value.slice(0, 80))} is not a valid URL`;
  }
  return undefined;
}

/** Free text (messages, reasons): bounded in UTF-8 bytes. */
export function textProblem(value: string, maxBytes: number): string | undefined {
  const bytes = Buffer.byteLength(value, "utf8");
  return bytes > maxBytes ? `is ${bytes} bytes long; at most ${maxBytes} allowed` : undefined;
}

/** Single-line printable text (versions, flake refs). */
export function lineProblem(value: string, maxLength: number): string | undefined {
  if (value.length > maxLength) return `is ${value.length} characters long; at most ${maxLength} allowed`;
  if (CONTROL_RE.test(value)) return "must not contain control characters or newlines";
  return undefined;
}

export function deploymentIdProblem(value: string): string | undefined {
  if (value === "") return undefined;
  if (value.length > MAX_DEPLOYMENT_ID_LENGTH)
    return `is ${value.length} characters long; at most ${MAX_DEPLOYMENT_ID_LENGTH} allowed`;
  return DEPLOYMENT_ID_RE.test(value) ? undefined : "may contain only letters, digits and . _ : -";
}

export function platformProblem(value: string): string | undefined {
  if (value === "") return undefined;
  if (value.length > MAX_PLATFORM_LENGTH)
    return `is ${value.length} characters long; at most ${MAX_PLATFORM_LENGTH} allowed`;
  return PLATFORM_RE.test(value)
    ? undefined
    : `${JSON.stringify(value.slice(0, 40))} is not a platform like x86_64-linux`;
}
