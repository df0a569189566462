/**
 * The signed-in API key and the FleetService client that sends it. The key lives in
 * sessionStorage: it survives a reload of the tab but not the end of the browser session, and
 * other tabs never see it. The server enforces every role; the role read here only decides which
 * buttons to offer.
 */
import { type Client, Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { ApiKeyRole, FleetService } from "../gen/nixfleet/v1/fleet_pb.js";

const STORAGE_KEY = "nixfleet.apiKey";
const KEY_RE = /^nfk-[0-9a-f]{64}$/;

export type Fleet = Client<typeof FleetService>;

export interface Session {
  key: string;
  keyName: string;
  role: ApiKeyRole;
  fleet: Fleet;
}

export function storedKey(): string | null {
  return sessionStorage.getItem(STORAGE_KEY);
}

export function forgetKey(): void {
  sessionStorage.removeItem(STORAGE_KEY);
}

/** Why a typed key cannot be right, before asking the server (null: looks fine). */
export function keyProblem(key: string): string | null {
  if (key === "") return "Paste an API key (nfk-…).";
  if (!KEY_RE.test(key)) return "An API key is 'nfk-' followed by 64 lowercase hex characters.";
  return null;
}

/** `onRefused` runs when the server no longer accepts the key (revoked while signed in). */
export function fleetClient(key: string, onRefused: () => void = () => {}): Fleet {
  const auth: Interceptor = (next) => async (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    try {
      const res = await next(req);
      if (!res.stream) return res;
      // A stream's refusal (at its start, or a key revoked while it runs) arrives as it is read.
      const messages = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* messages;
          } catch (err) {
            if (isUnauthenticated(err)) onRefused();
            throw err;
          }
        })(),
      };
    } catch (err) {
      if (isUnauthenticated(err)) onRefused();
      throw err;
    }
  };
  // Same origin: the page and the API are served by the same listener.
  return createClient(
    FleetService,
    createConnectTransport({ baseUrl: window.location.origin, interceptors: [auth] }),
  );
}

/**
 * Asks the server who the key is; keeps it for this browser session when it is accepted.
 * `onSignedOut` runs (once) if the server later refuses the key.
 */
export async function signIn(key: string, onSignedOut: () => void = () => {}): Promise<Session> {
  let signedIn = false;
  const fleet = fleetClient(key, () => {
    if (!signedIn) return;
    signedIn = false;
    forgetKey();
    onSignedOut();
  });
  const caller = await fleet.getCaller({});
  signedIn = true;
  sessionStorage.setItem(STORAGE_KEY, key);
  return { key, keyName: caller.keyName, role: caller.role, fleet };
}

export function canDeploy(session: Session): boolean {
  return session.role >= ApiKeyRole.DEPLOY;
}

export function roleName(role: ApiKeyRole): string {
  return ApiKeyRole[role]?.toLowerCase() ?? "unknown";
}

/** A sentence for an error from the API, naming what to do where there is something to do. */
export function describeError(err: unknown): string {
  const e = ConnectError.from(err);
  switch (e.code) {
    case Code.Unauthenticated:
      return `Signed out: ${e.rawMessage}. Sign in again with a valid key.`;
    case Code.PermissionDenied:
      return `Not allowed: ${e.rawMessage}.`;
    case Code.Unavailable:
      return `The control plane is unavailable (${e.rawMessage}); retrying.`;
    default:
      return e.rawMessage || String(err);
  }
}

export function isUnauthenticated(err: unknown): boolean {
  return ConnectError.from(err).code === Code.Unauthenticated;
}
