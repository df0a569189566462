/**
 * A fleet served by several real `nixfleet-control-plane` processes on one PostgreSQL database:
 * the replicas (TLS, one client CA), a signed HTTP binary cache, sandboxed hosts with real agent
 * processes, each agent given every replica's URL starting with "its" replica (so the fleet
 * spreads over them and fails over to the next), and real Connect clients to any replica.
 *
 * Plain module: no node:test imports.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import type { Client } from "@connectrpc/connect";
import pg from "pg";
import type { FleetService } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { Clients } from "../control-plane/harness.js";
import { BinaryCache, type CacheServer } from "../fixtures/cache.js";
import { ControlPlaneProcess, generationHealthCheck } from "../fixtures/fleet.js";
import { type AgentProcess, createHost, type LogLine, type TestHost } from "../fixtures/host.js";
import type { SystemClosure, SystemSpec } from "../fixtures/nix.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { sharedPostgres } from "../fixtures/postgres.js";
import { programArgs, REPO_ROOT } from "../fixtures/programs.js";

const execFileP = promisify(execFile);

export interface ReplicaHost {
  name: string;
  tags: string[];
  host: TestHost;
  systems: Record<string, SystemClosure>;
  /** Index of the replica its URL list starts with. */
  home: number;
  agent?: AgentProcess;
}

export class ReplicaFleet {
  readonly hosts = new Map<string, ReplicaHost>();
  adminKey = "";
  private clientsByUrl = new Map<string, Clients>();

  private constructor(
    readonly dir: string,
    readonly databaseUrl: string,
    readonly pki: Pki,
    readonly cache: BinaryCache,
    readonly cacheServer: CacheServer,
    readonly replicas: ControlPlaneProcess[],
  ) {}

  static async create(options: {
    dir: string;
    replicas: number;
    hosts: { name: string; tags: string[] }[];
    systems: SystemSpec[];
  }): Promise<ReplicaFleet> {
    const { dir } = options;
    const pki = createPki(join(dir, "pki"));
    const cache = await BinaryCache.create(join(dir, "cache"));
    const databaseUrl = await (await sharedPostgres()).database();
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("NIXFLEET_")));
    const replicas = Array.from(
      { length: options.replicas },
      () =>
        new ControlPlaneProcess(
          [
            "--database-url",
            databaseUrl,
            "--tls-cert",
            pki.server.cert,
            "--tls-key",
            pki.server.key,
            "--client-ca",
            pki.ca,
            "--poll-hint",
            "1",
            "--executor-tick",
            "1",
            "--heartbeat-interval",
            "2",
          ],
          env as NodeJS.ProcessEnv,
        ),
    );
    const fleet = new ReplicaFleet(dir, databaseUrl, pki, cache, await cache.serve(), replicas);
    // All at once: they migrate the one database under its advisory lock.
    await Promise.all(replicas.map((r) => r.start("127.0.0.1:0", 120_000)));
    fleet.adminKey = await fleet.createKey("admin", "admin");
    const specs: SystemSpec[] = [{ label: "base" }, ...options.systems];
    const toPush: string[] = [];
    await Promise.all(
      options.hosts.map(async (spec, i) => {
        const host = createHost(join(dir, "hosts", spec.name), spec.name);
        const systems = await host.buildSystems(specs);
        await host.install(systems["base"]!.path);
        for (const s of Object.values(systems)) if (s.label !== "base") toPush.push(s.path);
        pki.client(spec.name);
        fleet.hosts.set(spec.name, { ...spec, host, systems, home: i % options.replicas });
      }),
    );
    await cache.push(toPush, { deleteLocal: true });
    return fleet;
  }

  async createKey(name: string, role: string): Promise<string> {
    const { stdout } = await execFileP(
      process.execPath,
      [
        ...programArgs("control-plane"),
        "keys",
        "create",
        "--init",
        "--database-url",
        this.databaseUrl,
        "--name",
        name,
        "--role",
        role,
      ],
      { cwd: REPO_ROOT },
    );
    return stdout.trim();
  }

  host(name: string): ReplicaHost {
    const h = this.hosts.get(name);
    if (!h) throw new Error(`no host ${name}`);
    return h;
  }

  /** Every replica's URL, starting with `first`'s: where an agent goes, and where it fails over to. */
  urls(first: number): string[] {
    const all = this.replicas.map((r) => r.url);
    return [...all.slice(first), ...all.slice(0, first)];
  }

  startAgent(name: string, overrides: Record<string, unknown> = {}): AgentProcess {
    const h = this.host(name);
    const client = this.pki.client(name);
    h.host.writeConfig({
      controlPlaneUrl: this.urls(h.home),
      tags: h.tags,
      // Polls so rare that only a push (or a reconnect's hello) can deliver an assignment.
      pollInterval: 3600,
      retryInterval: 1,
      healthInterval: 2,
      verifyTimeout: 4,
      activationTimeout: 60,
      metricsPort: 0,
      metricsAddress: "127.0.0.1",
      heartbeatInterval: 2,
      tls: { caCert: this.pki.ca, clientCert: client.cert, clientKey: client.key },
      healthChecks: { command: [generationHealthCheck(h.host)] },
      ...overrides,
    });
    h.agent = h.host.startAgent({ trustedPublicKeys: this.cache.trustedPublicKeys });
    return h.agent;
  }

  /** The URL of the replica holding `name`'s push stream now (its agent's last stream_connected). */
  streamUrl(name: string): string | undefined {
    const lines = this.host(name).agent?.find({ event: "stream_connected" }) ?? [];
    return lines.at(-1)?.["url"] as string | undefined;
  }

  /** Which replica (index) a URL is. */
  replicaOf(url: string | undefined): number {
    return this.replicas.findIndex((r) => r.url === url);
  }

  /** Runs a query on the fleet's database (what an operator's psql would see). */
  async sql<R extends Record<string, unknown>>(text: string, values: unknown[] = []): Promise<R[]> {
    const client = new pg.Client({ connectionString: this.databaseUrl });
    await client.connect();
    try {
      return (await client.query<R>(text, values)).rows;
    } finally {
      await client.end();
    }
  }

  /** The process id of replica `i` now (from its latest log line). */
  pid(i: number): number | undefined {
    return this.replicas[i]!.lines.findLast((l) => typeof l["pid"] === "number")?.["pid"] as
      | number
      | undefined;
  }

  /** Which running replica holds the executor lease (holder ids are host:pid:random), and its epoch. */
  async leader(): Promise<{ index: number; epoch: number }> {
    const [row] = await this.sql<{ holder: string; epoch: string; live: boolean }>(
      "SELECT holder, epoch, expires_at > (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS live FROM executor_lease",
    );
    const pid = row?.live ? Number(row.holder.split(":").at(-2)) : Number.NaN;
    const index = this.replicas.findIndex((r, i) => r.running && this.pid(i) === pid);
    return { index, epoch: Number(row?.epoch ?? 0) };
  }

  /** A FleetService client to replica `i` with the admin key. */
  fleet(i: number): Client<typeof FleetService> {
    const url = this.replicas[i]!.url;
    let clients = this.clientsByUrl.get(url);
    if (!clients) {
      clients = new Clients(url, this.pki);
      this.clientsByUrl.set(url, clients);
    }
    return clients.fleet(this.adminKey);
  }

  /** `pushed` log lines of `name`'s agent for `path`. */
  pushes(name: string, path: string): LogLine[] {
    return this.host(name).agent?.find((l) => l.event === "pushed" && l["desired"] === path) ?? [];
  }

  diagnostics(): string {
    const parts: string[] = [];
    for (const h of this.hosts.values())
      parts.push(
        `--- ${h.name} agent (current ${h.host.current()}):\n${h.agent?.tail(15) ?? "(not started)"}`,
      );
    this.replicas.forEach((r, i) => {
      parts.push(`--- replica ${i} (${r.running ? r.url : "down"}):\n${r.tail(20)}`);
    });
    return parts.join("\n");
  }

  async explain<T>(body: () => Promise<T>): Promise<T> {
    try {
      return await body();
    } catch (err) {
      const e = err as Error;
      e.message = `${e.message}\n\n${this.diagnostics()}`;
      throw e;
    }
  }

  async close(): Promise<void> {
    for (const c of this.clientsByUrl.values()) await c.close();
    await Promise.all([...this.hosts.values()].map((h) => h.host.cleanup()));
    await Promise.all(this.replicas.map((r) => r.stop()));
    await this.cacheServer.stop();
  }
}
