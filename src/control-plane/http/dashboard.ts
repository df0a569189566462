/**
 * The web dashboard's static files (bundled at build time into dist/dashboard by
 * scripts/build-dashboard.mjs) and the security headers every dashboard response carries.
 *
 * The page talks to FleetService over Connect from the same origin, so the policy can be strict:
 * nothing inline, nothing from elsewhere, no framing. Which files exist is decided once at
 * start-up (a fixed table, no path joins from the URL), so no request can reach outside the
 * bundle.
 */
import { existsSync, readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { join } from "node:path";

type Req = IncomingMessage | Http2ServerRequest;
type Res = ServerResponse | Http2ServerResponse;

export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "font-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy": CONTENT_SECURITY_POLICY,
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-resource-policy": "same-origin",
  "permissions-policy": "camera=(), microphone=(), geolocation=()",
};

/** URL path → file in the bundle directory, with its content type. */
const FILES: Readonly<Record<string, { file: string; type: string }>> = {
  "/": { file: "index.html", type: "text/html; charset=utf-8" },
  "/index.html": { file: "index.html", type: "text/html; charset=utf-8" },
  "/assets/app.js": { file: "app.js", type: "text/javascript; charset=utf-8" },
  "/assets/app.css": { file: "app.css", type: "text/css; charset=utf-8" },
  "/assets/favicon.svg": { file: "favicon.svg", type: "image/svg+xml" },
};

/**
 * Where the bundle is: next to the compiled server (dist/control-plane/http → dist/dashboard), or,
 * when the server runs from src/ through tsx, in the checkout's dist/dashboard.
 */
export function defaultDashboardDir(): string | null {
  const candidates = [
    join(import.meta.dirname, "..", "..", "dashboard"),
    join(import.meta.dirname, "..", "..", "..", "dist", "dashboard"),
  ];
  return candidates.find((dir) => existsSync(join(dir, "app.js"))) ?? null;
}

function send(
  res: Res,
  status: number,
  type: string,
  body: string | Buffer,
  extra: Record<string, string> = {},
) {
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    "content-type": type,
    // Revalidate every time: the bundle's file names carry no hash, and an upgrade must show at once.
    "cache-control": "no-cache",
    ...extra,
  });
  res.end(body);
}

/**
 * Serves the dashboard's files; answers true when it handled the request. Files are read once,
 * here: the bundle is small (~150 KB) and fixed for the life of the process.
 */
export function dashboardHandler(dir: string | null): (req: Req, res: Res, path: string) => boolean {
  const files = new Map<string, { body: Buffer; type: string }>();
  if (dir) {
    for (const [path, { file, type }] of Object.entries(FILES)) {
      const full = join(dir, file);
      if (existsSync(full)) files.set(path, { body: readFileSync(full), type });
    }
  }
  return (req, res, path) => {
    if (req.method !== "GET" && req.method !== "HEAD") return false;
    const hit = files.get(path);
    if (hit) {
      send(res, 200, hit.type, req.method === "HEAD" ? "" : hit.body);
      return true;
    }
    if (path === "/" || path === "/index.html") {
      send(
        res,
        503,
        "text/plain; charset=utf-8",
        "the dashboard was not built: run `npm run build` (it bundles src/dashboard into dist/dashboard)\n",
      );
      return true;
    }
    send(res, 404, "text/plain; charset=utf-8", "not found\n");
    return true;
  };
}

/**
 * On the agents' listener (which asks browsers for a client certificate), `GET /` says where the
 * dashboard is instead of an RPC error.
 */
export function dashboardPointer(
  dashboardUrl: () => string | null,
): (req: Req, res: Res, path: string) => boolean {
  return (req, res, path) => {
    if (path !== "/" || (req.method !== "GET" && req.method !== "HEAD")) return false;
    const url = dashboardUrl();
    send(
      res,
      404,
      "text/plain; charset=utf-8",
      url
        ? `this port serves agents and the API; the dashboard is at ${url}/\n`
        : "this port serves agents and the API; start the control plane with --dashboard-listen <host:port> for the web dashboard\n",
    );
    return true;
  };
}

/**
 * The dashboard listener's router: FleetService calls (the page's API, authenticated by API key
 * like any other client), /healthz and friends, then the files. AgentService is not served here:
 * agents authenticate with client certificates, which this listener does not ask for.
 */
export function dashboardListenerHandler(o: {
  fleetServicePrefix: string;
  connect: (req: Req, res: Res) => void;
  plain: (req: Req, res: Res, path: string) => boolean;
  files: (req: Req, res: Res, path: string) => boolean;
}): (req: Req, res: Res) => void {
  return (req, res) => {
    const path = (req.url ?? "/").split("?", 1)[0]!;
    if (path.startsWith(o.fleetServicePrefix)) return o.connect(req, res);
    if (o.plain(req, res, path)) return;
    if (o.files(req, res, path)) return;
    send(res, 404, "text/plain; charset=utf-8", "not found\n");
  };
}
