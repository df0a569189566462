/**
 * The original nixfleet v0.1 agent REST API, kept so existing REST agents and curl scripts work:
 *   GET  /api/v1/machines/{id}/desired-generation → 200 {hash, cache_url, poll_hint} | 404
 *   POST /api/v1/machines/{id}/report             → 200 (empty)
 * Same logic and same identity rule as AgentService (verified client certificate with CN = id);
 * errors are plain text with v0.1's status codes.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { Code } from "@connectrpc/connect";
import { machineIdProblem } from "../../common/ids.js";
import type { Logger } from "../../common/logger.js";
import { ValidationError } from "../../common/validation.js";
import type { Phase } from "../auth/interceptors.js";
import { agentMachineDecision, peerIdentityOf } from "../auth/peer-identity.js";
import { checkHealth, checkReport } from "../services/agent-input.js";
import type { AgentIntake } from "../services/agent-intake.js";
import { legacyReport } from "./legacy-report.js";

type Req = IncomingMessage | Http2ServerRequest;
type Res = ServerResponse | Http2ServerResponse;

export const REST_MAX_BODY_BYTES = 1024 * 1024;

export interface RestCompatOptions {
  intake: AgentIntake;
  allowInsecure: boolean;
  phase: () => Phase;
  logger: Logger;
}

const ROUTE = /^\/api\/v1\/machines\/([^/]+)\/(desired-generation|report)$/;

function text(res: Res, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", ...headers });
  res.end(`${body}\n`);
}

function json(res: Res, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

class BodyTooLarge extends Error {}

async function readBody(req: Req, max: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"] ?? "0");
  if (declared > max) throw new BodyTooLarge();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) throw new BodyTooLarge();
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** Handles the route if it is one of ours; returns false for other paths. */
export function restCompatHandler(o: RestCompatOptions): (req: Req, res: Res, path: string) => boolean {
  return (req, res, path) => {
    if (!path.startsWith("/api/v1/")) return false;
    const m = ROUTE.exec(path);
    if (!m) {
      text(res, 404, "not found");
      return true;
    }
    void serve(req, res, m[1]!, m[2] as "desired-generation" | "report").catch((err) => {
      o.logger.error({ err, path }, "REST compatibility route failed");
      if (!res.headersSent) text(res, 500, "internal server error");
      else res.end();
    });
    return true;
  };

  async function serve(
    req: Req,
    res: Res,
    rawId: string,
    route: "desired-generation" | "report",
  ): Promise<void> {
    const expected = route === "report" ? "POST" : "GET";
    if (req.method !== expected && !(expected === "GET" && req.method === "HEAD")) {
      text(res, 405, `use ${expected}`, { allow: expected });
      return;
    }
    const phase = o.phase();
    if (phase !== "ready") {
      text(res, 503, phase === "starting" ? "starting, retry shortly" : "shutting down, retry shortly", {
        "retry-after": "5",
      });
      return;
    }
    let id: string;
    try {
      id = decodeURIComponent(rawId);
    } catch {
      text(res, 400, "machine id is not valid percent-encoding");
      return;
    }
    const idProblem = machineIdProblem(id);
    if (idProblem) {
      text(res, 400, idProblem);
      return;
    }
    const decision = agentMachineDecision(peerIdentityOf(req), id, o.allowInsecure);
    if (!decision.ok) {
      text(res, decision.code === Code.Unauthenticated ? 401 : 403, decision.message);
      return;
    }
    if (route === "desired-generation") {
      const answer = await o.intake.desired(id);
      if (!answer.desired) {
        text(res, 404, `no desired generation for ${id}`);
        return;
      }
      json(res, 200, {
        hash: answer.desired.storePath,
        cache_url: answer.desired.cacheUrl || null,
        poll_hint: answer.pollHintSeconds ?? null,
      });
      return;
    }
    let body: unknown;
    try {
      body = JSON.parse((await readBody(req, REST_MAX_BODY_BYTES)).toString("utf8"));
    } catch (err) {
      if (err instanceof BodyTooLarge)
        text(res, 413, `request body larger than ${REST_MAX_BODY_BYTES} bytes`);
      else text(res, 400, `request body is not valid JSON: ${(err as Error).message}`);
      return;
    }
    try {
      const { report, health } = legacyReport(id, body);
      checkReport(report);
      if (health) checkHealth(health);
      await o.intake.report(report);
      if (health) await o.intake.health(health);
    } catch (err) {
      if (err instanceof ValidationError) {
        text(res, 400, err.message);
        return;
      }
      throw err;
    }
    res.writeHead(200);
    res.end();
  }
}
