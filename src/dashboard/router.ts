/**
 * Hash routes (#/fleet, #/hosts/web-01, #/rollouts/r-…, #/releases): the server serves one page,
 * and links survive a reload without any server-side routing.
 */
import { useEffect, useState } from "preact/hooks";

export type Route =
  | { page: "fleet" }
  | { page: "host"; id: string }
  | { page: "rollouts" }
  | { page: "rollout"; id: string }
  | { page: "releases" };

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const [first, second] = parts;
  if (first === "hosts" && second) return { page: "host", id: second };
  if (first === "rollouts" && second) return { page: "rollout", id: second };
  if (first === "rollouts") return { page: "rollouts" };
  if (first === "releases") return { page: "releases" };
  return { page: "fleet" };
}

export const href = {
  fleet: () => "#/fleet",
  host: (id: string) => `#/hosts/${encodeURIComponent(id)}`,
  rollouts: () => "#/rollouts",
  rollout: (id: string) => `#/rollouts/${encodeURIComponent(id)}`,
  releases: () => "#/releases",
};

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(window.location.hash));
  useEffect(() => {
    const onChange = () => setRoute(parseRoute(window.location.hash));
    window.addEventListener("hashchange", onChange);
    return () => window.removeEventListener("hashchange", onChange);
  }, []);
  return route;
}
