/**
 * `nixfleet-control-plane keys create|list|revoke`: API key management straight against the
 * database file on the control-plane host. This is how the first admin key comes to exist —
 * there is no network endpoint that works without a key. Safe while the server runs (SQLite
 * WAL; writes wait for each other).
 */
import { existsSync, statSync, writeFileSync } from "node:fs";
import { userInfo } from "node:os";
import { dirname } from "node:path";
import { create, toJson } from "@bufbuild/protobuf";
import { keyNameProblem } from "../common/ids.js";
import { ListApiKeysResponseSchema } from "../gen/nixfleet/v1/fleet_pb.js";
import { generateSecret, hashSecret, newKeyId, ROLES } from "./auth/api-keys.js";
import { UsageError } from "./config.js";
import { apiKeyToProto } from "./services/convert.js";
import { openStore } from "./store/open.js";
import type { ApiKeyRecord, Role } from "./store/records.js";
import type { FleetStore } from "./store/repository.js";

export interface KeysIo {
  out: (line: string) => void;
  err: (line: string) => void;
}

function localActor(): string {
  try {
    return `local:${userInfo().username}`;
  } catch {
    return "local:unknown";
  }
}

/**
 * A mistyped --db-path must not quietly become a new, empty database (whose keys the running
 * server never sees). Only `keys create --init` may create one, and only in a directory that
 * already exists — on a fresh install, before the server first ran.
 */
function checkDatabase(dbPath: string, init: boolean): void {
  if (existsSync(dbPath)) {
    if (!statSync(dbPath).isFile()) throw new UsageError("--db-path", `${dbPath} is not a file`);
    return;
  }
  const dir = dirname(dbPath);
  if (!init)
    throw new UsageError(
      "--db-path",
      `no database at ${dbPath}; check the path (the server's --db-path, NIXFLEET_CP_DB_PATH), ` +
        "or on a fresh install create it with `keys create --init …`",
    );
  if (!existsSync(dir) || !statSync(dir).isDirectory())
    throw new UsageError(
      "--db-path",
      `directory ${dir} does not exist; --init creates the database file, not its directory`,
    );
  // Private from the start: it will hold key hashes and the fleet's state (SQLite gives the -wal
  // and -shm files the same mode).
  writeFileSync(dbPath, "", { mode: 0o600, flag: "wx" });
}

/** The SQLite file's path, or the PostgreSQL database (`--database-url`). */
export type KeysDatabase = string | { databaseUrl: string };

function checkTarget(db: KeysDatabase, init: boolean): void {
  // A PostgreSQL database is created by its administrator; the first connection migrates it.
  if (typeof db === "string") checkDatabase(db, init);
}

async function withStore<T>(db: KeysDatabase, fn: (store: FleetStore) => Promise<T>): Promise<T> {
  const { store } = await openStore(
    typeof db === "string"
      ? { databaseUrl: null, path: db, lockWaitMs: 30_000 }
      : { databaseUrl: db.databaseUrl, path: "" },
  );
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

const iso = (ms: number | null) => (ms === null ? "-" : new Date(ms).toISOString());

export async function keysCreate(
  dbPath: KeysDatabase,
  name: string,
  role: string,
  io: KeysIo,
  opts: { init?: boolean } = {},
): Promise<void> {
  const problem = keyNameProblem(name);
  if (problem) throw new UsageError("--name", problem);
  if (!(ROLES as readonly string[]).includes(role))
    throw new UsageError("--role", `must be one of ${ROLES.join(", ")}, got ${JSON.stringify(role)}`);
  checkTarget(dbPath, opts.init ?? false);
  const secret = generateSecret();
  const key = await withStore(dbPath, (store) =>
    store.createApiKey(
      { id: newKeyId(), name, role: role as Role, hash: hashSecret(secret) },
      localActor(),
      Date.now(),
    ),
  );
  // The secret alone on stdout, so `KEY=$(nixfleet-control-plane keys create …)` works.
  io.out(secret);
  io.err(
    `created API key ${key.name} (${key.id}) with role ${key.role}; the secret above is shown only once`,
  );
}

export async function keysList(
  dbPath: KeysDatabase,
  includeRevoked: boolean,
  json: boolean,
  io: KeysIo,
): Promise<void> {
  checkTarget(dbPath, false);
  const keys: ApiKeyRecord[] = await withStore(dbPath, (store) => store.listApiKeys(includeRevoked));
  if (json) {
    // The API's own shape (protobuf JSON of ListApiKeysResponse), as `nixfleet keys list --json`
    // prints it, so one script reads both.
    const res = create(ListApiKeysResponseSchema, { apiKeys: keys.map(apiKeyToProto) });
    io.out(JSON.stringify(toJson(ListApiKeysResponseSchema, res), null, 2));
    return;
  }
  const rows = [
    ["ID", "NAME", "ROLE", "CREATED", "LAST USED", "REVOKED"],
    ...keys.map((k) => [k.id, k.name, k.role, iso(k.createdAt), iso(k.lastUsedAt), iso(k.revokedAt)]),
  ];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows)
    io.out(
      r
        .map((cell, i) => cell.padEnd(widths[i]!))
        .join("  ")
        .trimEnd(),
    );
}

export async function keysRevoke(dbPath: KeysDatabase, key: string, io: KeysIo): Promise<void> {
  if (!key) throw new UsageError("<key>", "give the id or name of the key to revoke");
  checkTarget(dbPath, false);
  const revoked = await withStore(dbPath, (store) => store.revokeApiKey(key, null, localActor(), Date.now()));
  io.out(`revoked API key ${revoked.name} (${revoked.id})`);
}
