/**
 * TLS session-ticket keys that outlive the process, so agents reconnecting after a restart (or to
 * another replica holding the same file) resume their TLS session instead of paying a full mTLS
 * handshake each — the bulk of a reconnect storm's server CPU.
 *
 * The file holds exactly 48 random bytes (Node's `ticketKeys`: 16 bytes key name, 16 HMAC, 16
 * AES). Absent, it is created with mode 0600; replicas must share one file's content for an
 * agent to resume on any of them. Node decrypts tickets with the current key only, so rotating
 * (replacing the file; each listener re-reads it every minute) makes tickets issued under the
 * old key fall back to one full handshake — cheap, since agents hold their connection for long.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

export const TICKET_KEYS_BYTES = 48;
/** How often a listener re-reads the file to pick up a rotated key. */
export const TICKET_KEYS_RELOAD_MS = 60_000;

export interface TicketKeysOptions {
  file: string;
  /** The option that named the file, for errors. */
  option: string;
  /** A rotated file that cannot be used (the previous key stays). */
  onReloadError: (message: string) => void;
}

/**
 * How long a session ticket can be resumed: the TLS 1.3 maximum (RFC 8446 §4.6.1). Node's default
 * (300 s) would make every agent connected for longer than that do a full handshake after a
 * restart. The client certificate is not re-verified on resumption (auth/peer-identity.ts checks
 * its expiry again).
 */
const TICKET_LIFETIME_SECONDS = 7 * 24 * 3600;

/**
 * The TLS server options for resumption. Sessions are bound to a session-id context: Node's
 * default is a hash of process.argv, which differs between replicas (and after a flag change), so
 * it is derived from what a session's authorization depends on — the client CA (a new CA must not
 * honour sessions verified under the old one) and whether a client certificate is asked for.
 */
export function resumptionOptions(
  clientCa: Buffer,
  requestClientCert: boolean,
  ticketKeys: Buffer | undefined,
): { ticketKeys?: Buffer; sessionTimeout: number; sessionIdContext: string } {
  const sessionIdContext = createHash("sha256")
    .update(clientCa)
    .update(requestClientCert ? "client-cert" : "no-client-cert")
    .digest("hex")
    .slice(0, 32);
  return { ...(ticketKeys ? { ticketKeys } : {}), sessionTimeout: TICKET_LIFETIME_SECONDS, sessionIdContext };
}

export class TicketKeysError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TicketKeysError";
  }
}

function describe(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code ?? "";
  if (code === "EACCES") return "permission denied";
  if (code === "EISDIR") return "is a directory";
  if (code === "ENOENT") return "no such file or directory";
  return (err as Error).message;
}

/**
 * Reads the key file, at start-up creating it when absent (a reload does not: a replica minting
 * its own key would stop sharing it); every problem names `option` and the path.
 */
export function loadTicketKeys(path: string, option: string, create = true): Buffer {
  if (create) {
    try {
      // Like the SQLite file next to it, which is only opened after the listeners are bound.
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      writeFileSync(path, randomBytes(TICKET_KEYS_BYTES), { mode: 0o600, flag: "wx" });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST")
        throw new TicketKeysError(`${option}: cannot create ${path}: ${describe(err)}`);
    }
  }
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (err) {
    throw new TicketKeysError(`${option}: cannot read ${path}: ${describe(err)}`);
  }
  // Whoever reads the key can decrypt the tickets, and with them every resumed session's keys.
  if ((statSync(path).mode & 0o004) !== 0)
    throw new TicketKeysError(
      `${option}: ${path} is readable by every user; it decrypts TLS sessions: chmod 600 it (and replace its content)`,
    );
  if (data.length !== TICKET_KEYS_BYTES)
    throw new TicketKeysError(
      `${option}: ${path} holds ${data.length} bytes; expected exactly ${TICKET_KEYS_BYTES} random bytes ` +
        `(e.g. head -c ${TICKET_KEYS_BYTES} /dev/urandom > FILE; or delete it to have one created)`,
    );
  return data;
}

/**
 * Re-reads the file every TICKET_KEYS_RELOAD_MS and hands a changed, valid key to `apply`; a
 * broken replacement keeps the current key and is reported once per distinct error.
 */
export function watchTicketKeys(
  path: string,
  option: string,
  current: Buffer,
  apply: (keys: Buffer) => void,
  onError: (message: string) => void,
): () => void {
  let keys = current;
  let lastError = "";
  const timer = setInterval(() => {
    try {
      const next = loadTicketKeys(path, option, false);
      lastError = "";
      if (next.equals(keys)) return;
      keys = next;
      apply(next);
    } catch (err) {
      const message = (err as Error).message;
      if (message !== lastError) onError(`${message}; keeping the previous ticket key`);
      lastError = message;
    }
  }, TICKET_KEYS_RELOAD_MS);
  timer.unref();
  return () => clearInterval(timer);
}
