/**
 * Binary cache URL rules. The URL reaches `nix copy --from` on a root process, and Nix store
 * URLs carry settings in their query string — some of which weaken verification (e.g.
 * `trusted=true` accepts unsigned paths). The control plane may choose *which* cache, but not
 * *how* Nix verifies it: a URL from the control plane may only carry harmless parameters. The
 * operator's own `cacheUrl` option is trusted as written.
 */

const CONTROL_PLANE_SCHEMES = new Set(["http:", "https:", "file:", "s3:"]);
const LOCAL_SCHEMES = new Set([...CONTROL_PLANE_SCHEMES, "ssh:", "ssh-ng:"]);
/** Query parameters that select or tune a cache without changing what Nix trusts. */
const SAFE_PARAMS = new Set(["region", "endpoint", "scheme", "profile", "priority", "want-mass-query"]);
export const MAX_CACHE_URL_LENGTH = 2048;

export function cacheUrlProblem(
  value: string,
  { fromControlPlane }: { fromControlPlane: boolean },
): string | undefined {
  if (value.length === 0) return "must not be empty";
  if (value.length > MAX_CACHE_URL_LENGTH) return `is longer than ${MAX_CACHE_URL_LENGTH} characters`;
  // biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
  if (/[\s\u0000-\u001f\u007f]/.test(value)) return "must not contain whitespace or control characters";
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return `is not a URL: ${JSON.stringify(value.slice(0, 120))}`;
  }
  const schemes = fromControlPlane ? CONTROL_PLANE_SCHEMES : LOCAL_SCHEMES;
  if (!schemes.has(url.protocol)) {
    return `scheme ${url.protocol} is not allowed (use ${[...schemes].map((s) => s.slice(0, -1)).join(", ")})`;
  }
  if (url.hash) return "must not contain a fragment";
  if (fromControlPlane) {
    if (url.username || url.password) return "must not contain credentials";
    for (const name of url.searchParams.keys()) {
      if (!SAFE_PARAMS.has(name)) {
        return `query parameter ${JSON.stringify(name)} is not accepted from the control plane (allowed: ${[...SAFE_PARAMS].join(", ")})`;
      }
    }
  }
  return undefined;
}
