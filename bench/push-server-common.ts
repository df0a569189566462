/**
 * What the two push baselines (raw node:http2 and naive connect-node) share: the same mTLS
 * listener settings as the control plane (client certificate requested, checked per route), a
 * POST /bench/trigger route that pushes a DesiredGenerationChanged whose hash is the request
 * body to every open stream, and a heartbeat to every stream each interval.
 * Args (JSON): {cert, key, ca, heartbeatMs, backlog}. Prints {"url", "pid"} once listening.
 */
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";

export interface BaselineArgs {
  cert: string;
  key: string;
  ca: string;
  heartbeatMs: number;
  backlog?: number;
}

export const args = JSON.parse(process.argv[2]!) as BaselineArgs;

export function listen(
  onRequest: (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void,
  onTrigger: (hash: string) => void,
  onHeartbeat: () => void,
): void {
  const server = http2.createSecureServer(
    {
      cert: readFileSync(args.cert),
      key: readFileSync(args.key),
      ca: readFileSync(args.ca),
      requestCert: true,
      rejectUnauthorized: false,
      allowHTTP1: true,
    },
    (req, res) => {
      if (req.url === "/bench/trigger") {
        let body = "";
        req.on("data", (c: Buffer) => {
          body += c.toString();
        });
        req.on("end", () => {
          onTrigger(body);
          res.end("ok");
        });
        return;
      }
      onRequest(req, res);
    },
  );
  server.on("sessionError", () => {});
  server.on("tlsClientError", () => {});
  setInterval(onHeartbeat, args.heartbeatMs).unref();
  server.listen({ port: 0, host: "127.0.0.1", backlog: args.backlog ?? 511 }, () => {
    const port = (server.address() as AddressInfo).port;
    process.stdout.write(`${JSON.stringify({ url: `https://127.0.0.1:${port}`, pid: process.pid })}\n`);
  });
  process.on("SIGTERM", () => process.exit(0));
}
