/**
 * TLS session resumption across a control-plane restart, on real TLS: the control plane's listener
 * with a ticket-key file (src/control-plane/http/ticket-keys.ts) and the agent's resuming
 * connector (src/agent/transport/tls-session.ts) over node:http2. A "restart" is a new listener
 * reading the same file. Each request answers with the identity the control plane derives for the
 * connection (auth/peer-identity.ts), so a resumed session is checked to still name the machine of
 * the certificate it was verified with.
 */
import assert from "node:assert/strict";
import { chmodSync, readFileSync, statSync, writeFileSync } from "node:fs";
import http2 from "node:http2";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { TLSSocket } from "node:tls";
import { connectAgentService } from "../../src/agent/transport/client.js";
import { resumingTlsConnector } from "../../src/agent/transport/tls-session.js";
import { peerIdentityOf } from "../../src/control-plane/auth/peer-identity.js";
import { type Listener, listenTls, type TlsOptions } from "../../src/control-plane/http/listener.js";
import { loadTicketKeys, TICKET_KEYS_BYTES } from "../../src/control-plane/http/ticket-keys.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

const OPTION = "--tls-ticket-keys";

describe("TLS session resumption across restarts", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let otherPki: Pki;
  const open: Listener[] = [];
  before(() => {
    pki = createPki(join(dir, "pki"));
    otherPki = createPki(join(dir, "other-pki"));
  });
  after(async () => {
    await Promise.all(open.map((l) => l.close(1000)));
    removeTempDir(dir);
  });

  /** A control-plane listener ("a process") using `keysFile`; answers with the peer identity. */
  async function serve(keysFile: string, ca = readFileSync(pki.ca)): Promise<Listener> {
    const tls: TlsOptions = {
      cert: readFileSync(pki.server.cert),
      key: readFileSync(pki.server.key),
      ca,
      ticketKeys: { file: keysFile, option: OPTION, onReloadError: () => {} },
    };
    const l = await listenTls("127.0.0.1", 0, tls, (req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(peerIdentityOf(req)));
    });
    open.push(l);
    return l;
  }

  async function stop(l: Listener): Promise<void> {
    open.splice(open.indexOf(l), 1);
    await l.close(1000);
  }

  /**
   * One connection through the agent's connector: whether it resumed, and the identity the server
   * saw. Waits for the ticket (TLS 1.3 sends it after the handshake) before closing.
   */
  async function call(
    url: string,
    connector: ReturnType<typeof resumingTlsConnector>,
  ): Promise<{ resumed: boolean; identity: { verified: boolean; commonName: string | null } }> {
    const session = http2.connect(url, { createConnection: connector.createConnection });
    try {
      await new Promise<void>((resolve, reject) => {
        session.once("connect", () => resolve());
        session.once("error", reject);
      });
      const socket = session.socket as unknown as TLSSocket;
      const resumed = socket.isSessionReused();
      const body = await new Promise<string>((resolve, reject) => {
        const req = session.request({ ":path": "/whoami" });
        let text = "";
        req.setEncoding("utf8");
        req.on("data", (d: string) => {
          text += d;
        });
        req.on("end", () => resolve(text));
        req.on("error", reject);
        req.end();
      });
      // The ticket of this connection has arrived by the time a response did (the server sends it
      // right after its Finished), so the next connection can offer it.
      assert.ok(connector.hasSession(), "the client holds a session ticket");
      return { resumed, identity: JSON.parse(body) };
    } finally {
      session.close();
    }
  }

  function agentConnector(cn: string) {
    const c = pki.client(cn);
    return resumingTlsConnector({
      ca: readFileSync(pki.ca),
      cert: readFileSync(c.cert),
      key: readFileSync(c.key),
    });
  }

  it("resumes after a restart with the same ticket key, and the machine is still the certificate's", async () => {
    const keys = join(dir, "same", "tls-ticket-keys");
    const first = await serve(keys);
    const agent = agentConnector("machine-01");
    const full = await call(first.url, agent);
    assert.equal(full.resumed, false, "the first connection is a full handshake");
    assert.deepEqual([full.identity.verified, full.identity.commonName], [true, "machine-01"]);
    await stop(first);

    const second = await serve(keys);
    const again = await call(second.url, agent);
    assert.equal(again.resumed, true, "the reconnect after the restart resumed the TLS session");
    assert.deepEqual(
      [again.identity.verified, again.identity.commonName],
      [true, "machine-01"],
      "a resumed session keeps the verified client certificate",
    );
    // Another machine's agent resuming its own session is itself, not the first one.
    const other = agentConnector("machine-02");
    await call(second.url, other);
    const otherAgain = await call(second.url, other);
    assert.equal(otherAgain.resumed, true);
    assert.equal(otherAgain.identity.commonName, "machine-02");
  });

  it("the agent's own client resumes its session after a restart", async () => {
    const keys = join(dir, "agent-client", "tls-ticket-keys");
    const seen: { resumed: boolean; machine: string | null }[] = [];
    const tls: TlsOptions = {
      cert: readFileSync(pki.server.cert),
      key: readFileSync(pki.server.key),
      ca: readFileSync(pki.ca),
      ticketKeys: { file: keys, option: OPTION, onReloadError: () => {} },
    };
    // Any answer will do (the call fails as unimplemented): what counts is how it connected.
    const record: Parameters<typeof listenTls>[3] = (req, res) => {
      seen.push({
        resumed: (req.socket as TLSSocket).isSessionReused(),
        machine: peerIdentityOf(req).commonName,
      });
      res.writeHead(404);
      res.end();
    };
    const c = pki.client("machine-05");
    const material = { ca: readFileSync(pki.ca), cert: readFileSync(c.cert), key: readFileSync(c.key) };
    const first = await listenTls("127.0.0.1", 0, tls, record);
    open.push(first);
    // The restarted control plane comes back on the same port, as after a SIGKILL.
    const port = first.port;
    const connection = connectAgentService({
      baseUrls: [first.url],
      protocol: "grpc",
      tls: material,
      pingIntervalMs: 60_000,
    });
    try {
      await connection.client.getDesiredGeneration({ machineId: "machine-05" }).catch(() => {});
      await stop(first);
      const second = await listenTls("127.0.0.1", port, tls, record);
      open.push(second);
      // The manager notices the closed connection and opens a new one; a call may still meet the
      // old one while it goes, so call until one reached the new listener.
      while (seen.length < 2)
        await connection.client.getDesiredGeneration({ machineId: "machine-05" }).catch(() => {});
    } finally {
      connection.close();
    }
    assert.deepEqual(seen[0], { resumed: false, machine: "machine-05" });
    assert.deepEqual(seen.at(-1), { resumed: true, machine: "machine-05" }, "the reconnect resumed");
  });

  it("falls back to a full handshake, and still works, when the key changed", async () => {
    const keys = join(dir, "rotated", "tls-ticket-keys");
    const first = await serve(keys);
    const agent = agentConnector("machine-03");
    await call(first.url, agent);
    await stop(first);
    writeFileSync(keys, Buffer.alloc(TICKET_KEYS_BYTES, 7));
    const second = await serve(keys);
    const again = await call(second.url, agent);
    assert.equal(again.resumed, false, "a ticket under the old key is not accepted");
    assert.deepEqual([again.identity.verified, again.identity.commonName], [true, "machine-03"]);
    // The new connection brought a ticket under the new key.
    assert.equal((await call(second.url, agent)).resumed, true);
  });

  it("does not resume a session verified under another client CA", async () => {
    const keys = join(dir, "ca-change", "tls-ticket-keys");
    const first = await serve(keys);
    const agent = agentConnector("machine-04");
    await call(first.url, agent);
    await stop(first);
    // Same ticket key, but the operator replaced the client CA: the old verification must not carry over.
    const second = await serve(keys, readFileSync(otherPki.ca));
    const again = await call(second.url, agent);
    assert.equal(again.resumed, false);
    assert.equal(again.identity.verified, false, "machine-04's certificate is not signed by the new CA");
  });

  it("keeps a connection without a client certificate unverified when it resumes", async () => {
    const keys = join(dir, "anonymous", "tls-ticket-keys");
    const l = await serve(keys);
    const anonymous = resumingTlsConnector({ ca: readFileSync(pki.ca) });
    await call(l.url, anonymous);
    const again = await call(l.url, anonymous);
    assert.equal(again.resumed, true);
    assert.deepEqual([again.identity.verified, again.identity.commonName], [false, null]);
  });

  it("does not keep the identity of a certificate that expired since the session was created", () => {
    // A resumed session carries the original handshake's verification; only the dates tell. (A
    // fake socket: a certificate expiring between two real handshakes would need the clock moved.)
    const socket = (reused: boolean) => ({
      encrypted: true,
      authorized: true,
      isSessionReused: () => reused,
      getPeerCertificate: () => ({ subject: { CN: "machine-06" }, valid_to: "Jan  1 00:00:00 2020 GMT" }),
    });
    const resumed = peerIdentityOf({ socket: socket(true) } as never);
    assert.equal(resumed.verified, false);
    assert.match(resumed.problem ?? "", /CN machine-06\) expired on Jan {2}1 00:00:00 2020 GMT; renew it/);
  });

  it("creates the key file with mode 0600, and names the option when the file is bad", () => {
    const created = join(dir, "new", "state", "tls-ticket-keys");
    const keys = loadTicketKeys(created, OPTION);
    assert.equal(keys.length, TICKET_KEYS_BYTES);
    assert.equal(statSync(created).mode & 0o777, 0o600);
    assert.deepEqual(loadTicketKeys(created, OPTION), keys, "an existing file is read, not replaced");

    const short = join(dir, "short-keys");
    writeFileSync(short, "not 48 bytes\n", { mode: 0o600 });
    assert.throws(
      () => loadTicketKeys(short, OPTION),
      /^TicketKeysError: --tls-ticket-keys: .*short-keys holds 13 bytes; expected exactly 48 random bytes/,
    );
    const open = join(dir, "world-readable-keys");
    writeFileSync(open, Buffer.alloc(TICKET_KEYS_BYTES, 1));
    chmodSync(open, 0o644);
    assert.throws(
      () => loadTicketKeys(open, OPTION),
      /--tls-ticket-keys: .*readable by every user.*chmod 600/,
    );
    assert.throws(
      () => loadTicketKeys(join(dir, "absent-keys"), OPTION, false),
      /--tls-ticket-keys: cannot read .*absent-keys: no such file or directory/,
    );
  });

  it("refuses to start a listener on a bad key file, naming the option", async () => {
    const bad = join(dir, "bad-keys");
    writeFileSync(bad, Buffer.alloc(10), { mode: 0o600 });
    await assert.rejects(serve(bad), /--tls-ticket-keys: .*bad-keys holds 10 bytes/);
  });
});
