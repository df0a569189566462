/**
 * The agent's Nix layer against real Nix: closures built here, pushed to a signed cache (file://
 * and HTTP), deleted locally, fetched back by `nix copy --from` — and every failure a fleet sees:
 * a path missing from the cache, a dead cache, a bad or untrusted signature, a stalled cache
 * (hard timeout), no cache at all.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { readSystemLink } from "../../src/agent/host.js";
import { FetchError, Nix } from "../../src/agent/nix.js";
import { BinaryCache, type CacheServer, generateSigningKey } from "../fixtures/cache.js";
import { waitFor } from "../fixtures/host.js";
import { buildSystems, isValidPath, nixEnv, type SystemClosure } from "../fixtures/nix.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

async function fetchError(p: Promise<unknown>): Promise<FetchError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof FetchError, `expected FetchError, got ${String(err)}`);
    return err;
  }
  assert.fail("fetch succeeded but should have failed");
}

describe("nix layer (real Nix, real caches)", () => {
  const dir = makeTempDir("nixfleet-nix-");
  let cache: BinaryCache;
  let server: CacheServer;
  let systems: Record<string, SystemClosure>;
  let nix: Nix;

  before(async () => {
    systems = await buildSystems(join(dir, "host"), [
      { label: "from-file" },
      { label: "from-http" },
      { label: "local-only" },
      { label: "missing" },
      { label: "bad-sig" },
      { label: "untrusted" },
      { label: "slow" },
      { label: "dead" },
      { label: "http-500" },
      { label: "re-signed" },
    ]);
    cache = await BinaryCache.create(join(dir, "cache"));
    const other = await generateSigningKey(join(dir, "otherkey"), "someone-else-1");
    const s = (l: string) => systems[l]!.path;
    await cache.push(
      [
        s("from-file"),
        s("from-http"),
        s("missing"),
        s("bad-sig"),
        s("slow"),
        s("dead"),
        s("http-500"),
        s("re-signed"),
      ],
      {
        deleteLocal: true,
      },
    );
    await cache.push([s("untrusted")], { key: other, deleteLocal: true });
    cache.remove(s("missing"));
    cache.corruptSignature(s("bad-sig"));
    server = await cache.serve();
    nix = new Nix(nixEnv({ trustedPublicKeys: cache.trustedPublicKeys }));
  });

  after(async () => {
    await server.stop();
    removeTempDir(dir);
  });

  it("copies a closure from a file:// cache", async () => {
    const path = systems["from-file"]!.path;
    assert.equal(await isValidPath(path), false, "deleted locally, so the fetch must download");
    assert.equal(await nix.fetch(path, cache.fileUrl, { timeoutMs: 60_000 }), "cache");
    assert.equal(await isValidPath(path), true);
    assert.equal(await nix.isValid(path, { timeoutMs: 30_000 }), true);
  });

  it("copies a closure from an HTTP cache", async () => {
    const path = systems["from-http"]!.path;
    const before = server.count(/\.narinfo$/);
    assert.equal(await nix.fetch(path, server.url, { timeoutMs: 60_000 }), "cache");
    assert.ok(server.count(/\.narinfo$/) > before, "the narinfo was requested over HTTP");
    assert.ok(server.count(/^\/nar\//) > 0, "and the NAR");
  });

  it("needs no download for a path already present, even with the cache down", async () => {
    const path = systems["local-only"]!.path;
    assert.equal(await nix.fetch(path, "http://127.0.0.1:9", { timeoutMs: 60_000 }), "local");
    assert.equal(
      await nix.fetch(path, null, { timeoutMs: 60_000 }),
      "local",
      "nix path-info path without a cache",
    );
  });

  it("without a cache, a path not in the store is a clear error", async () => {
    const e = await fetchError(nix.fetch(systems["missing"]!.path, null, { timeoutMs: 60_000 }));
    assert.equal(e.kind, "missing");
    assert.match(e.message, /not in the local store and no cache URL is configured/);
  });

  it("a path missing from the cache fails with the trimmed nix error and advice", async () => {
    const path = systems["missing"]!.path;
    const e = await fetchError(nix.fetch(path, cache.fileUrl, { timeoutMs: 60_000 }));
    assert.equal(e.kind, "missing");
    assert.match(e.message, /error: path '.*' is required, but there is no substituter/);
    assert.match(e.message, /push the closure to the cache/);
    assert.ok(e.message.length < 2500, "stderr is trimmed");
    assert.equal(await isValidPath(path), false);
  });

  it("a corrupted signature is refused", async () => {
    const path = systems["bad-sig"]!.path;
    const e = await fetchError(nix.fetch(path, cache.fileUrl, { timeoutMs: 60_000 }));
    assert.equal(e.kind, "signature");
    assert.match(e.message, /lacks a valid signature/);
    assert.equal(await isValidPath(path), false, "nothing unsigned entered the store");
  });

  it("a path re-signed after a refusal is accepted on the next attempt (no narinfo remembered)", async () => {
    const path = systems["re-signed"]!.path;
    const good = readFileSync(cache.narinfoFile(path));
    cache.corruptSignature(path);
    const e = await fetchError(nix.fetch(path, server.url, { timeoutMs: 60_000 }));
    assert.equal(e.kind, "signature");
    writeFileSync(cache.narinfoFile(path), good);
    await nix.fetch(path, server.url, { timeoutMs: 60_000 });
    assert.equal(await isValidPath(path), true);
  });

  it("a path signed by a key this host does not trust is refused", async () => {
    const e = await fetchError(nix.fetch(systems["untrusted"]!.path, cache.fileUrl, { timeoutMs: 60_000 }));
    assert.equal(e.kind, "signature");
  });

  it("a dead cache is reported as unreachable", async () => {
    const dead = await cache.serve();
    const url = dead.url;
    await dead.stop();
    const e = await fetchError(nix.fetch(systems["dead"]!.path, url, { timeoutMs: 60_000 }));
    assert.equal(e.kind, "unreachable");
    assert.match(e.message, /check that the cache is up/);
  });

  it("a cache answering HTTP 500 fails the fetch", async () => {
    const flaky = await cache.serve();
    flaky.failWith(500);
    try {
      const e = await fetchError(nix.fetch(systems["http-500"]!.path, flaky.url, { timeoutMs: 60_000 }));
      assert.ok(["unreachable", "missing", "other"].includes(e.kind), e.kind);
      assert.ok(flaky.count() > 0);
    } finally {
      await flaky.stop();
    }
  });

  it("a stalled cache hits the hard timeout and nix is killed", async () => {
    const stalled = await cache.serve();
    stalled.delayMs = 60_000;
    try {
      const e = await fetchError(nix.fetch(systems["slow"]!.path, stalled.url, { timeoutMs: 1500 }));
      assert.equal(e.kind, "timeout");
      assert.match(e.message, /timed out/);
    } finally {
      await stalled.stop();
    }
  });

  it("an abort (agent shutdown) interrupts a fetch", async () => {
    const stalled = await cache.serve();
    stalled.delayMs = 60_000;
    const controller = new AbortController();
    try {
      const p = nix.fetch(systems["slow"]!.path, stalled.url, {
        timeoutMs: 60_000,
        signal: controller.signal,
      });
      // Abort once nix copy is talking to the (stalled) cache.
      await waitFor("nix copy to reach the cache", () => stalled.count() > 0);
      controller.abort();
      const e = await fetchError(p);
      assert.equal(e.kind, "interrupted");
    } finally {
      await stalled.stop();
    }
  });

  it("sets a profile, switches its generation back, and pins GC roots", async () => {
    const profile = join(dir, "profiles", "system");
    const a = systems["local-only"]!.path;
    const b = systems["from-file"]!.path;
    await nix.setProfile(profile, a, { timeoutMs: 60_000 });
    await nix.setProfile(profile, b, { timeoutMs: 60_000 });
    assert.equal(readSystemLink(profile), b);
    await nix.switchProfileGeneration(profile, 1, { timeoutMs: 60_000 });
    assert.equal(readSystemLink(profile), a);
    assert.equal(readlinkSync(profile), "system-1-link");
    const root = join(dir, "gcroots", "previous");
    await nix.addGcRoot(root, a, { timeoutMs: 60_000 });
    assert.equal(readlinkSync(root), a);
    await assert.rejects(
      nix.setProfile(profile, "/nix/store/00000000000000000000000000000000-gone", { timeoutMs: 60_000 }),
      /could not set profile/,
    );
  });

  it("re-points a registered GC root to a pinned path without running Nix; anything else goes to nix-store", async () => {
    const a = systems["local-only"]!.path;
    const b = systems["from-file"]!.path;
    const previous = join(dir, "roots", "previous");
    const desired = join(dir, "roots", "desired");
    // Registered by nix-store (an entry in gcroots/auto pointing at each link).
    await nix.addGcRoot(previous, a, { timeoutMs: 60_000 });
    await nix.addGcRoot(desired, b, { timeoutMs: 60_000 });
    // No Nix on PATH: a call that needed nix-store would fail "could not be started".
    const noNix = new Nix({ ...nixEnv(), PATH: join(dir, "no-such-bin") });
    await noNix.addGcRoot(previous, b, { timeoutMs: 60_000 });
    assert.equal(readlinkSync(previous), b, "pinned by the desired root, so known valid");
    // `a` is pinned by nothing now: whether it is still valid is Nix's to say (--realise).
    await assert.rejects(
      noNix.addGcRoot(desired, a, { timeoutMs: 60_000 }),
      /could not pin .* could not be started/,
    );
    // A link Nix never registered still needs nix-store, even for a pinned path.
    await assert.rejects(
      noNix.addGcRoot(join(dir, "roots", "other"), b, { timeoutMs: 60_000 }),
      /could not pin .* could not be started/,
    );
    // What the garbage collector sees: the re-pointed link is a root of `b`.
    const roots = execFileSync("nix-store", ["--gc", "--print-roots"], { env: nixEnv(), encoding: "utf8" });
    assert.match(roots, new RegExp(`${previous} -> ${b}`));
  });

  it("reports an invalid path as not valid", async () => {
    assert.equal(
      await nix.isValid("/nix/store/00000000000000000000000000000000-nothing", { timeoutMs: 30_000 }),
      false,
    );
  });
});
