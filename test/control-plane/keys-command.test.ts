/**
 * `nixfleet-control-plane keys …` against the database file: a mistyped --db-path is refused
 * instead of becoming a new empty database, `create --init` is the explicit way on a fresh
 * install, and `list --json` has the API's shape (the one `nixfleet keys list --json` prints).
 */
import assert from "node:assert/strict";
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fromJson } from "@bufbuild/protobuf";
import { UsageError } from "../../src/control-plane/config.js";
import { keysCreate, keysList, keysRevoke } from "../../src/control-plane/keys-command.js";
import { ListApiKeysResponseSchema } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { tempDir } from "../fixtures/tmp.js";

function capture() {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (l: string) => out.push(l), err: (l: string) => err.push(l) }, out, err };
}

describe("nixfleet-control-plane keys", () => {
  it("list, revoke and create refuse a database that does not exist, and create nothing", async (t) => {
    const dir = tempDir(t);
    const typo = join(dir, "typo", "stat.db");
    const { io } = capture();
    for (const run of [
      () => keysList(typo, false, false, io),
      () => keysList(join(dir, "stat.db"), false, true, io),
      () => keysRevoke(typo, "admin", io),
      () => keysCreate(join(dir, "stat.db"), "admin", "admin", io),
    ]) {
      await assert.rejects(run, (e: unknown) => {
        assert.ok(e instanceof UsageError);
        assert.match(e.message, /^--db-path: no database at .*stat\.db; check the path .*--init/);
        return true;
      });
    }
    assert.equal(existsSync(join(dir, "typo")), false, "no directory was created");
    assert.equal(existsSync(join(dir, "stat.db")), false, "no database was created");
  });

  it("create --init makes a private database in an existing directory, never the directory", async (t) => {
    const dir = tempDir(t);
    const { io, out } = capture();
    await assert.rejects(
      () => keysCreate(join(dir, "missing", "state.db"), "admin", "admin", io, { init: true }),
      /--db-path: directory .*missing does not exist/,
    );
    assert.equal(existsSync(join(dir, "missing")), false);
    const db = join(dir, "state.db");
    await keysCreate(db, "admin", "admin", io, { init: true });
    assert.match(out[0]!, /^nfk-[0-9a-f]{64}$/);
    assert.equal(statSync(db).mode & 0o777, 0o600);
    // Without --init on the existing database: works.
    await keysCreate(db, "ops", "deploy", io);
    assert.equal(out.length, 2);
  });

  it("list --json is protobuf JSON of ListApiKeysResponse, like `nixfleet keys list --json`", async (t) => {
    const db = join(tempDir(t), "state.db");
    await keysCreate(db, "admin", "admin", capture().io, { init: true });
    const { io, out } = capture();
    await keysList(db, false, true, io);
    const parsed = JSON.parse(out.join("\n"));
    const res = fromJson(ListApiKeysResponseSchema, parsed); // strict: unknown fields throw
    assert.equal(res.apiKeys.length, 1);
    assert.equal(parsed.apiKeys[0].name, "admin");
    assert.equal(parsed.apiKeys[0].role, "API_KEY_ROLE_ADMIN");
    assert.match(parsed.apiKeys[0].createdAt, /^\d{4}-\d\d-\d\dT/);
  });
});
