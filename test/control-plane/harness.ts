/**
 * An in-process control plane on a real TLS socket (port 0, temp SQLite file — or a fresh
 * PostgreSQL database with NIXFLEET_TEST_STORE=postgres — throwaway PKI),
 * with real Connect clients: gRPC over HTTP/2, Connect over HTTP/2 or HTTP/1.1, with or without
 * client certificates. Everything it opens is closed by close().
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, before } from "node:test";
import { type Client, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
  Http2SessionManager,
} from "@connectrpc/connect-node";
import { createLogger, type Logger } from "../../src/common/logger.js";
import { generateSecret, hashSecret, newKeyId } from "../../src/control-plane/auth/api-keys.js";
import { ControlPlane, type ControlPlaneOptions } from "../../src/control-plane/control-plane.js";
import type { Role } from "../../src/control-plane/store/records.js";
import { AgentService } from "../../src/gen/nixfleet/v1/agent_pb.js";
import { FleetService } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { type CertPair, createPki, type Pki } from "../fixtures/pki.js";
import { sharedPostgres, testDatabaseUrl } from "../fixtures/postgres.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

/** "connect-json": the Connect protocol with JSON messages (the others are binary). */
export type Protocol = "grpc" | "connect" | "connect-json" | "connect-h1" | "grpc-web";

export interface HarnessOptions extends Partial<Omit<ControlPlaneOptions, "logger" | "tls">> {
  /** Bind only; do not open the database (to observe the start-up phase). */
  listenOnly?: boolean;
  /** Reuse a data directory (restart tests); otherwise a fresh temp dir. */
  dir?: string;
}

export class Harness {
  readonly logs = new PassThrough();
  readonly logLines: string[] = [];
  readonly keys: Record<Role, string> = { readonly: "", deploy: "", admin: "" };
  cp!: ControlPlane;
  url = "";

  private constructor(
    readonly pki: Pki,
    readonly dir: string,
    private readonly ownsDir: boolean,
  ) {
    this.logs.on("data", (chunk: Buffer) => {
      for (const line of chunk.toString("utf8").split("\n")) if (line) this.logLines.push(line);
    });
  }

  static async start(pki: Pki, options: HarnessOptions = {}): Promise<Harness> {
    const dir = options.dir ?? makeTempDir("nixfleet-cp-");
    const h = new Harness(pki, dir, options.dir === undefined);
    const logger: Logger = createLogger({ name: "cp-test", level: "debug", destination: h.logs });
    h.cp = new ControlPlane({
      listen: { host: "127.0.0.1", port: 0 },
      dbPath: join(dir, "state.db"),
      databaseUrl: await testDatabaseUrl(dir),
      tls: options.allowInsecure
        ? null
        : {
            cert: readFileSync(pki.server.cert),
            key: readFileSync(pki.server.key),
            ca: readFileSync(pki.ca),
          },
      allowInsecure: false,
      metricsListen: null,
      metricsRequireKey: false,
      staleAfterSeconds: 300,
      pollHintSeconds: 5,
      executorTickMs: 100,
      heartbeatIntervalSeconds: 15,
      reportRetentionHours: 168,
      shutdownTimeoutMs: 2000,
      ...options,
      logger,
    });
    try {
      if (options.listenOnly) await h.cp.listen();
      else await h.cp.start();
      h.url = h.cp.url;
      if (!options.listenOnly) await h.createKeys();
    } catch (err) {
      await h.close().catch(() => {});
      throw err;
    }
    return h;
  }

  /** Creates one key per role (used by the fleet clients below). */
  async createKeys(): Promise<void> {
    for (const role of ["readonly", "deploy", "admin"] as const) {
      const secret = generateSecret();
      await this.cp.store.createApiKey(
        { id: newKeyId(), name: `test-${role}-${Date.now()}`, role, hash: hashSecret(secret) },
        "local:test",
        Date.now(),
      );
      this.keys[role] = secret;
    }
  }

  private clientsValue: Clients | null = null;

  get clients(): Clients {
    this.clientsValue ??= new Clients(this.url, this.pki, this.cp.options.allowInsecure);
    return this.clientsValue;
  }

  /** A FleetService client with the given role's key (or any secret, or none). */
  fleet(key: Role | string | null = "admin", protocol: Protocol = "grpc"): Client<typeof FleetService> {
    const secret = key === null ? null : key in this.keys ? this.keys[key as Role] : key;
    return this.clients.fleet(secret, protocol);
  }

  /** An AgentService client presenting `machineId`'s certificate (or another, or none). */
  agent(
    machineId: string,
    options: { protocol?: Protocol; cert?: CertPair | null } = {},
  ): Client<typeof AgentService> {
    return this.clients.agent(machineId, options);
  }

  async close(): Promise<void> {
    try {
      await this.clientsValue?.close();
      await this.cp.stop();
    } finally {
      if (this.ownsDir) removeTempDir(this.dir);
    }
  }
}

/** Real Connect clients for a control plane at `url` (in-process or a separate process). */
export class Clients {
  private readonly closers: (() => void)[] = [];

  constructor(
    readonly url: string,
    readonly pki: Pki,
    readonly insecure = false,
  ) {}

  private tlsOptions(cert: CertPair | null) {
    return {
      ca: readFileSync(this.pki.ca),
      ...(cert ? { cert: readFileSync(cert.cert), key: readFileSync(cert.key) } : {}),
    };
  }

  transport(protocol: Protocol, cert: CertPair | null, headers: Record<string, string> = {}): Transport {
    const interceptors: Interceptor[] = [
      (next) => async (req) => {
        for (const [k, v] of Object.entries(headers)) req.header.set(k, v);
        return next(req);
      },
    ];
    const tls = this.insecure ? {} : this.tlsOptions(cert);
    if (protocol === "connect-h1") {
      const agent = this.insecure
        ? new http.Agent({ keepAlive: true })
        : new https.Agent({ ...tls, keepAlive: true });
      this.closers.push(() => agent.destroy());
      return createConnectTransport({
        baseUrl: this.url,
        httpVersion: "1.1",
        nodeOptions: { agent },
        interceptors,
      });
    }
    const manager = new Http2SessionManager(this.url, {}, tls);
    this.closers.push(() => manager.abort());
    const base = { baseUrl: this.url, httpVersion: "2" as const, sessionManager: manager, interceptors };
    if (protocol === "grpc") return createGrpcTransport(base);
    if (protocol === "grpc-web") return createGrpcWebTransport(base);
    return createConnectTransport({ ...base, useBinaryFormat: protocol !== "connect-json" });
  }

  fleet(secret: string | null, protocol: Protocol = "grpc"): Client<typeof FleetService> {
    return createClient(
      FleetService,
      this.transport(protocol, null, secret ? { authorization: `Bearer ${secret}` } : {}),
    );
  }

  agent(
    machineId: string,
    options: { protocol?: Protocol; cert?: CertPair | null } = {},
  ): Client<typeof AgentService> {
    const cert = options.cert === undefined ? this.pki.client(machineId) : options.cert;
    return createClient(AgentService, this.transport(options.protocol ?? "grpc", cert));
  }

  async close(): Promise<void> {
    for (const close of this.closers.splice(0)) close();
  }
}

/**
 * Two control-plane replicas on one fresh database of the shared PostgreSQL, started in the
 * enclosing suite's `before` and closed in its `after` (the suite skips without PostgreSQL).
 */
export function replicasOnPostgres(name: string): { a: Harness; b: Harness; url: string } {
  const dir = makeTempDir(`nixfleet-${name}-`);
  const replicas = {} as { a: Harness; b: Harness; url: string };
  before(async () => {
    const pki = createPki(join(dir, "pki"));
    replicas.url = await (await sharedPostgres()).database();
    const options = { databaseUrl: replicas.url, presenceFlushMs: 100, executorTickMs: 200 };
    replicas.a = await Harness.start(pki, options);
    replicas.b = await Harness.start(pki, options);
  });
  after(async () => {
    await replicas.b?.close();
    await replicas.a?.close();
    removeTempDir(dir);
  });
  return replicas;
}
