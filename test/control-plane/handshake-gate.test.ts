/**
 * The handshake gate (src/control-plane/http/handshake-gate.ts): at most N TLS handshakes in
 * progress, the rest wait unread in arrival order, a full waiting line sheds the newest at once.
 * Driven through the real TLS listener and with real sockets; no timing is asserted — each step
 * waits for the gate's own figures or for the connection's own events.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import tls from "node:tls";
import { HandshakeGate } from "../../src/control-plane/http/handshake-gate.js";
import { type Listener, listenTls } from "../../src/control-plane/http/listener.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { waitFor } from "./helpers.js";

describe("handshake gate: the TLS listener", () => {
  const dir = makeTempDir();
  let pki: Pki;
  before(() => {
    pki = createPki(join(dir, "pki"));
  });
  after(() => removeTempDir(dir));

  async function listen(maxHandshakes: number): Promise<Listener> {
    return listenTls(
      "127.0.0.1",
      0,
      {
        cert: readFileSync(pki.server.cert),
        key: readFileSync(pki.server.key),
        ca: readFileSync(pki.ca),
        requestClientCert: false,
      },
      (_req, res) => res.end("ok"),
      // Long timeouts: the silent connections must hold their places until the test lets go.
      { handshakeMs: 60_000, headerMs: 60_000, idleMs: 60_000, maxHandshakes },
    );
  }

  /** A TCP connection that never starts its handshake: it holds a place while it stays open. */
  function silent(port: number): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, "127.0.0.1", () => resolve(s));
      s.on("error", reject);
    });
  }

  /** A TLS client; `secure` settles when its handshake finished. */
  function client(port: number): { socket: tls.TLSSocket; secure: Promise<void> } {
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      ca: readFileSync(pki.ca),
      ALPNProtocols: ["http/1.1"],
    });
    const secure = new Promise<void>((resolve, reject) => {
      socket.once("secureConnect", () => resolve());
      socket.once("error", reject);
    });
    return { socket, secure };
  }

  it("a handshake waits while the places are taken, and proceeds as soon as one is free", async () => {
    const l = await listen(2);
    const holders = [await silent(l.port), await silent(l.port)];
    try {
      await waitFor("both silent connections in their handshake", () => l.handshakes()?.inFlight === 2);
      const c = client(l.port);
      let done = false;
      void c.secure.then(() => {
        done = true;
      });
      await waitFor("the client to wait for a place", () => l.handshakes()?.waiting === 1);
      assert.equal(done, false, "no handshake may start while both places are taken");
      holders[0]!.destroy();
      await c.secure;
      await waitFor("the finished handshake to free its place", () => l.handshakes()?.inFlight === 1);
      assert.deepEqual(l.handshakes(), { inFlight: 1, waiting: 0, shed: 0 });
      c.socket.destroy();
    } finally {
      for (const h of holders) h.destroy();
      await l.close(1000);
    }
  });

  it("with no limit (0) every connection starts its handshake at once", async () => {
    const l = await listen(0);
    const holders = [await silent(l.port), await silent(l.port), await silent(l.port)];
    try {
      const c = client(l.port);
      await c.secure;
      assert.deepEqual(l.handshakes(), { inFlight: 0, waiting: 0, shed: 0 });
      c.socket.destroy();
    } finally {
      for (const h of holders) h.destroy();
      await l.close(1000);
    }
  });
});

describe("handshake gate: admission order and shedding", () => {
  /** Real server-side sockets of `n` connections, in the order they were accepted. */
  async function accepted(n: number): Promise<{ sockets: net.Socket[]; close(): void }> {
    const sockets: net.Socket[] = [];
    const clients: net.Socket[] = [];
    const server = net.createServer({ pauseOnConnect: true }, (s) => sockets.push(s));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as net.AddressInfo).port;
    for (let i = 0; i < n; i++) {
      const c = net.connect(port, "127.0.0.1");
      c.on("error", () => {});
      clients.push(c);
      await waitFor(`connection ${i} accepted`, () => sockets.length === i + 1);
    }
    return {
      sockets,
      close() {
        for (const s of [...sockets, ...clients]) s.destroy();
        server.close();
      },
    };
  }

  it("admits in arrival order, skips a waiting peer that is gone, sheds the newest when the line is full", async () => {
    const { sockets, close } = await accepted(5);
    try {
      const admitted: net.Socket[] = [];
      const gate = new HandshakeGate({ maxInFlight: 1, maxWaiting: 2 }, (s) => admitted.push(s));
      for (const s of sockets) gate.offer(s);
      assert.deepEqual(admitted, [sockets[0]], "one place: only the first starts");
      assert.deepEqual(gate.stats(), { inFlight: 1, waiting: 2, shed: 2 });
      assert.ok(sockets[3]!.destroyed && sockets[4]!.destroyed, "the newest are closed at once");

      sockets[1]!.destroy(); // gave up while waiting
      gate.secured(sockets[0]!); // the first finished its handshake
      assert.deepEqual(admitted, [sockets[0], sockets[2]], "the next live one in arrival order");
      assert.deepEqual(gate.stats(), { inFlight: 1, waiting: 0, shed: 2 });

      sockets[2]!.destroy(); // a handshake that failed frees its place too
      await waitFor("the failed handshake's place to be free", () => gate.stats().inFlight === 0);
    } finally {
      close();
    }
  });
});
