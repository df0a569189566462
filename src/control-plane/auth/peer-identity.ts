/**
 * Who is on the other end of a connection: whether TLS verified a client certificate against
 * the client CA, and that certificate's CN (the machine id). Computed once per TLS connection
 * (per HTTP/2 session, or per HTTP/1.1 socket) and cached, because getPeerCertificate() on every
 * request costs 10–17% of a unary call.
 */
import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest, ServerHttp2Stream } from "node:http2";
import type { PeerCertificate, TLSSocket } from "node:tls";
import { Code, createContextKey } from "@connectrpc/connect";

export interface PeerIdentity {
  /** "plain" only with --allow-insecure. */
  transport: "tls" | "plain";
  /** TLS verified the client certificate against the client CA. */
  verified: boolean;
  /** The verified certificate's subject CN. */
  commonName: string | null;
  /** Why there is no verified identity (no certificate, untrusted, expired, no CN). */
  problem: string | null;
}

export const PLAIN_PEER: PeerIdentity = {
  transport: "plain",
  verified: false,
  commonName: null,
  problem: "plain HTTP connection (no TLS)",
};

/** Connect context key carrying the caller's PeerIdentity to interceptors and handlers. */
export const peerKey = createContextKey<PeerIdentity>(PLAIN_PEER, { description: "peer identity" });

const cache = new WeakMap<object, PeerIdentity>();

/**
 * Why TLS did not verify a presented certificate, in terms of what to do: an expired (or not yet
 * valid) certificate needs renewing, not a different CA — saying "must be signed by the client
 * CA" for it sends the operator after the wrong problem.
 */
function rejectionReason(socket: TLSSocket, cert: PeerCertificate): string {
  const code = socket.authorizationError ? String(socket.authorizationError) : "not verified";
  const cn = cert.subject?.CN ? ` (CN ${String(cert.subject.CN)})` : "";
  if (code === "CERT_HAS_EXPIRED")
    return `the client certificate${cn} expired on ${cert.valid_to}; renew it (issue a new one from the client CA)`;
  if (code === "CERT_NOT_YET_VALID")
    return `the client certificate${cn} is not valid until ${cert.valid_from}; check the clocks of this host and the one that issued it`;
  return `the client certificate was not accepted (${code}); it must be signed by the control plane's client CA`;
}

function identityOfSocket(socket: TLSSocket): PeerIdentity {
  if (!socket.encrypted) return PLAIN_PEER;
  const cert = socket.getPeerCertificate();
  const hasCert = cert && Object.keys(cert).length > 0;
  if (!hasCert)
    return {
      transport: "tls",
      verified: false,
      commonName: null,
      problem: "no client certificate was presented",
    };
  if (!socket.authorized) {
    return { transport: "tls", verified: false, commonName: null, problem: rejectionReason(socket, cert) };
  }
  // A resumed TLS session (tickets live up to 7 days) carries the verification of the handshake
  // that created it: a certificate that has expired since must not keep its identity.
  if (socket.isSessionReused() && Date.parse(cert.valid_to) < Date.now()) {
    const cn = cert.subject?.CN ? ` (CN ${String(cert.subject.CN)})` : "";
    return {
      transport: "tls",
      verified: false,
      commonName: null,
      problem: `the client certificate${cn} expired on ${cert.valid_to}; renew it (issue a new one from the client CA)`,
    };
  }
  const cn = cert.subject?.CN;
  const commonName = Array.isArray(cn) ? (cn[0] ?? null) : (cn ?? null);
  if (!commonName)
    return {
      transport: "tls",
      verified: false,
      commonName: null,
      problem: "the client certificate has no subject CN",
    };
  return { transport: "tls", verified: true, commonName, problem: null };
}

function cachedIdentity(key: object, socket: TLSSocket): PeerIdentity {
  let identity = cache.get(key);
  if (!identity) {
    identity = "encrypted" in socket && socket.encrypted ? identityOfSocket(socket) : PLAIN_PEER;
    cache.set(key, identity);
  }
  return identity;
}

/** The identity behind a request, cached per connection. */
export function peerIdentityOf(req: IncomingMessage | Http2ServerRequest): PeerIdentity {
  const key: object = "stream" in req && req.stream ? (req.stream.session ?? req.socket) : req.socket;
  return cachedIdentity(key, req.socket as TLSSocket);
}

/** The identity behind an HTTP/2 stream served without the compat layer (the raw gRPC Session). */
export function peerIdentityOfStream(stream: ServerHttp2Stream): PeerIdentity {
  const session = stream.session;
  if (!session) return PLAIN_PEER;
  return cachedIdentity(session, session.socket as TLSSocket);
}

export type AgentAuthDecision =
  | { ok: true }
  | { ok: false; code: Code.Unauthenticated | Code.PermissionDenied; message: string };

/** Whether a connection may act at all as an agent (before looking at which machine it claims). */
export function agentConnectionDecision(peer: PeerIdentity, allowInsecure: boolean): AgentAuthDecision {
  if (peer.transport === "plain") {
    return allowInsecure
      ? { ok: true }
      : { ok: false, code: Code.Unauthenticated, message: "agent calls need TLS with a client certificate" };
  }
  if (!peer.verified)
    return {
      ok: false,
      code: Code.Unauthenticated,
      message: `agent calls need a verified client certificate: ${peer.problem}`,
    };
  return { ok: true };
}

/** Whether the connection may act for `machineId` (the CN must equal it; insecure mode trusts the claim). */
export function agentMachineDecision(
  peer: PeerIdentity,
  machineId: string,
  allowInsecure: boolean,
): AgentAuthDecision {
  const connection = agentConnectionDecision(peer, allowInsecure);
  if (!connection.ok) return connection;
  if (peer.transport === "plain") return { ok: true };
  if (peer.commonName !== machineId) {
    return {
      ok: false,
      code: Code.PermissionDenied,
      message: `the client certificate is for machine ${peer.commonName}, not ${machineId}: an agent may only act for the machine its certificate names`,
    };
  }
  return { ok: true };
}
