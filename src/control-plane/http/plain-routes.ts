/**
 * The non-RPC endpoints: /healthz (liveness: the process answers), /readyz (the database is
 * migrated and answers; 503 while starting or stopping) and /metrics (Prometheus text; with
 * --metrics-require-key it needs any valid API key).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { Logger } from "../../common/logger.js";
import { hashSecret, parseBearer } from "../auth/api-keys.js";
import type { Phase } from "../auth/interceptors.js";
import type { Clock } from "../clock.js";
import type { ControlPlaneMetrics } from "../metrics.js";
import type { FleetStore } from "../store/repository.js";

type Req = IncomingMessage | Http2ServerRequest;
type Res = ServerResponse | Http2ServerResponse;

export interface PlainRoutesOptions {
  phase: () => Phase;
  store: () => FleetStore | null;
  metrics: ControlPlaneMetrics;
  metricsRequireKey: boolean;
  clock: Clock;
  logger: Logger;
}

function text(res: Res, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, {
    "content-type": "text/plain; charset=utf-8",
    "cache-control": "no-store",
    ...headers,
  });
  res.end(`${body}\n`);
}

export function plainRoutesHandler(o: PlainRoutesOptions): (req: Req, res: Res, path: string) => boolean {
  return (req, res, path) => {
    if (path !== "/healthz" && path !== "/readyz" && path !== "/metrics") return false;
    if (req.method !== "GET" && req.method !== "HEAD") {
      text(res, 405, "use GET", { allow: "GET" });
      return true;
    }
    void serve(req, res, path).catch((err) => {
      o.logger.error({ err, path }, `${path} failed`);
      if (!res.headersSent) text(res, 500, "internal error");
      else res.end();
    });
    return true;
  };

  async function serve(req: Req, res: Res, path: string): Promise<void> {
    if (path === "/healthz") {
      text(res, 200, "ok");
      return;
    }
    if (path === "/readyz") {
      const phase = o.phase();
      const store = o.store();
      if (phase !== "ready" || !store) {
        text(res, 503, phase === "stopping" ? "shutting down" : "starting: database not migrated yet");
        return;
      }
      try {
        await store.ping();
      } catch (err) {
        text(res, 503, `database not answering: ${(err as Error).message}`);
        return;
      }
      text(res, 200, "ready");
      return;
    }
    if (o.metricsRequireKey) {
      const parsed = parseBearer((req.headers["authorization"] as string | undefined) ?? null);
      const store = o.store();
      if (!parsed.ok || !store) {
        text(res, 401, parsed.ok ? "starting" : parsed.reason, { "www-authenticate": "Bearer" });
        return;
      }
      if (!(await store.authenticateApiKey(hashSecret(parsed.secret), o.clock.now()))) {
        text(res, 401, "unknown or revoked API key", { "www-authenticate": "Bearer" });
        return;
      }
    }
    const body = await o.metrics.render();
    res.writeHead(200, { "content-type": o.metrics.registry.contentType, "cache-control": "no-store" });
    res.end(body);
  }
}
