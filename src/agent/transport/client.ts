/**
 * The Connect client for AgentService, over the protocol the configuration picks:
 * - `grpc`: gRPC over HTTP/2 (default; the bidi Session stream needs HTTP/2);
 * - `connect`: the Connect protocol, binary, over HTTP/2 (Session works too);
 * - `connect-json`: Connect with JSON over HTTP/1.1 — the REST fallback through proxies that only
 *   speak HTTP/1.1. GetDesiredGeneration goes as a plain GET; pushes come over Watch.
 * mTLS material comes from src/common/tls.ts, read and checked once at start-up. Over HTTP/2 a
 * reconnect offers the last TLS session ticket (tls-session.ts).
 *
 * With several control-plane URLs, each gets its own connection and the client goes through a
 * FailoverTransport (src/common/failover-transport.ts) that uses the last one that worked.
 */
import { Agent as HttpsAgent } from "node:https";
import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { type Endpoint, FailoverTransport } from "../../common/failover-transport.js";
import type { Logger } from "../../common/logger.js";
import type { TlsMaterial } from "../../common/tls.js";
import { AgentService } from "../../gen/nixfleet/v1/agent_pb.js";
import type { Protocol } from "../config.js";
import { resumingSessionOptions } from "./tls-session.js";

export type AgentClient = Client<typeof AgentService>;

export interface ClientOptions {
  /** Tried in this order; a single URL (or one load-balanced name) is the common case. */
  baseUrls: readonly string[];
  protocol: Protocol;
  tls: TlsMaterial;
  /** HTTP/2 PING period: finds a dead connection under an idle stream. */
  pingIntervalMs: number;
  /** Where failovers between URLs are logged. */
  log?: Logger;
}

export interface AgentConnection {
  client: AgentClient;
  transport: Transport;
  /** Whether this protocol can run the bidi Session (else the agent uses Watch). */
  supportsSession: boolean;
  /** The URL calls go to now: the last one that answered. */
  currentUrl(): string;
  close(): void;
}

export function connectAgentService(options: ClientOptions): AgentConnection {
  const endpoints = options.baseUrls.map((url) => connectEndpoint(url, options));
  const transport = new FailoverTransport(endpoints, options.log);
  return {
    client: createClient(AgentService, transport),
    transport,
    supportsSession: options.protocol !== "connect-json",
    currentUrl: () => transport.currentUrl,
    close: () => transport.close(),
  };
}

function connectEndpoint(baseUrl: string, options: ClientOptions): Endpoint {
  const tls = {
    ...(options.tls.ca ? { ca: options.tls.ca } : {}),
    ...(options.tls.cert ? { cert: options.tls.cert } : {}),
    ...(options.tls.key ? { key: options.tls.key } : {}),
  };
  if (options.protocol === "connect-json") {
    const agent = new HttpsAgent({ keepAlive: true, ...tls });
    const transport = createConnectTransport({
      baseUrl,
      httpVersion: "1.1",
      useBinaryFormat: false,
      useHttpGet: true,
      nodeOptions: baseUrl.startsWith("https:") ? { agent } : {},
    });
    return { url: baseUrl, transport, close: () => agent.destroy() };
  }
  const sessionManager = new Http2SessionManager(
    baseUrl,
    {
      pingIntervalMs: options.pingIntervalMs,
      pingTimeoutMs: Math.max(5000, Math.min(options.pingIntervalMs, 15_000)),
      // Keep the connection while idle between polls only as long as a poll period would.
      idleConnectionTimeoutMs: 15 * 60 * 1000,
    },
    // Reconnects resume the TLS session (tls-session.ts): cheap for the control plane in a storm.
    baseUrl.startsWith("https:") ? resumingSessionOptions(tls) : tls,
  );
  const transport =
    options.protocol === "grpc"
      ? createGrpcTransport({ baseUrl, sessionManager })
      : createConnectTransport({
          baseUrl,
          httpVersion: "2",
          useBinaryFormat: true,
          sessionManager,
        });
  return { url: baseUrl, transport, close: () => sessionManager.abort() };
}
