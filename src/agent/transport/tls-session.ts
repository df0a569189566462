/**
 * TLS session resumption for the agent's HTTP/2 connection: the last session ticket the control
 * plane sent is offered on the next connection, so a reconnect (after a control-plane restart, to
 * a replica sharing its ticket key) is an abbreviated handshake — no certificate chain to send,
 * sign or verify — which is most of a reconnect storm's server CPU.
 *
 * With TLS 1.3 tickets arrive after the handshake (the 'session' event), possibly several; the
 * latest one wins. A ticket the server no longer accepts (another key, expired) just means a full
 * handshake. The session stays bound to this agent's client certificate: the server takes the
 * identity from the resumed session, which only this process holds.
 */
import type { ClientSessionOptions, SecureClientSessionOptions } from "node:http2";
import { isIP } from "node:net";
import tls from "node:tls";

export type CreateConnection = NonNullable<ClientSessionOptions["createConnection"]>;

/**
 * A `createConnection` for http2.connect (and so for Connect's Http2SessionManager) that opens the
 * TLS connection itself, offering and keeping the session; `options` are the TLS options (ca,
 * cert, key) every connection uses.
 */
export function resumingTlsConnector(options: tls.ConnectionOptions): {
  createConnection: CreateConnection;
  /** Whether a ticket is held (for tests and logs). */
  hasSession(): boolean;
} {
  let session: Buffer | undefined;
  const createConnection: CreateConnection = (authority: URL) => {
    const host = authority.hostname.replace(/^\[|\]$/g, "");
    const socket = tls.connect({
      ...options,
      host,
      port: Number(authority.port) || 443,
      // SNI only for names (RFC 6066 forbids IP literals), as http2.connect does by default.
      ...(isIP(host) ? {} : { servername: host }),
      ALPNProtocols: ["h2"],
      ...(session ? { session } : {}),
    });
    socket.on("session", (ticket: Buffer) => {
      session = ticket;
    });
    return socket;
  };
  return { createConnection, hasSession: () => session !== undefined };
}

/** The TLS options plus a resuming connector, for http2.connect / Http2SessionManager. */
export function resumingSessionOptions(options: tls.ConnectionOptions): SecureClientSessionOptions {
  return { ...options, createConnection: resumingTlsConnector(options).createConnection };
}
