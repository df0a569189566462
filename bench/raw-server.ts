/**
 * The baseline for unary throughput: plain node:http2 with the same mTLS setup answering a fixed
 * JSON body — what the machine can do before any RPC framework, auth or database is involved.
 * Prints {"url": …} once listening.
 */
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";

const [cert, key, ca] = process.argv.slice(2) as [string, string, string];
const body = JSON.stringify({
  hash: `/nix/store/${"0".repeat(32)}-nixos-system-bench`,
  cache_url: null,
  poll_hint: null,
});
const server = http2.createSecureServer(
  {
    cert: readFileSync(cert),
    key: readFileSync(key),
    ca: readFileSync(ca),
    requestCert: true,
    rejectUnauthorized: false,
    allowHTTP1: true,
  },
  (_req, res) => {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(body);
  },
);
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(
    `${JSON.stringify({ url: `https://127.0.0.1:${(server.address() as AddressInfo).port}` })}\n`,
  );
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
