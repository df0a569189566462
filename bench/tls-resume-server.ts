/**
 * The server side of bench/tls-resume.ts: the control plane's own TLS listener
 * (src/control-plane/http/listener.ts, with a ticket-key file) answering every request with the
 * peer identity, so a measured connection costs what an agent's does up to its first RPC.
 * Args (JSON): {cert, key, ca, ticketKeys}. Prints {url, pid}.
 */
import { readFileSync } from "node:fs";
import { peerIdentityOf } from "../src/control-plane/auth/peer-identity.js";
import { listenTls } from "../src/control-plane/http/listener.js";

const a = JSON.parse(process.argv[2]!) as { cert: string; key: string; ca: string; ticketKeys: string };
const l = await listenTls(
  "127.0.0.1",
  0,
  {
    cert: readFileSync(a.cert),
    key: readFileSync(a.key),
    ca: readFileSync(a.ca),
    ticketKeys: { file: a.ticketKeys, option: "ticketKeys", onReloadError: () => {} },
  },
  (req, res) => {
    res.writeHead(200);
    res.end(peerIdentityOf(req).commonName ?? "");
  },
);
process.stdout.write(`${JSON.stringify({ url: l.url, pid: process.pid })}\n`);
process.on("SIGTERM", () => process.exit(0));
