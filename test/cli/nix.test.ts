import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { CliFailure } from "../../src/cli/errors.js";
import { buildHost, flakeHosts, flakeRevision, pushToCache, runNix } from "../../src/cli/nix.js";
import { tempDir } from "../fixtures/tmp.js";

const SYSTEM = `${process.arch === "arm64" ? "aarch64" : "x86_64"}-linux`;
process.env["NIX_CONFIG"] =
  "substituters =\nsandbox = false\nbuild-users-group =\nexperimental-features = nix-command flakes";

/** A flake with two "NixOS" hosts whose toplevels are tiny derivations (no nixpkgs). */
function writeFlake(dir: string, marker: string): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, "flake.nix"),
    `{
  outputs = { self }: let
    mk = name: {
      pkgs.system = "${SYSTEM}";
      config.system.build.toplevel = builtins.derivation {
        name = "nixos-system-\${name}";
        system = "${SYSTEM}";
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        args = [ "-c" "mkdir -p $out/bin; echo \${name} ${marker} > $out/name" ];
      };
    };
  in { nixosConfigurations = { web-01 = mk "web-01"; db-01 = mk "db-01"; }; };
}
`,
  );
  return `path:${dir}`;
}

describe("release create's nix layer (real nix)", () => {
  it("lists hosts, builds a toplevel, reads platform and flake metadata, pushes to a cache", async (t) => {
    const dir = tempDir(t);
    const flake = writeFlake(join(dir, "flake"), `${process.pid}-${Date.now()}`);
    assert.deepEqual(await flakeHosts(runNix, flake), ["db-01", "web-01"]);
    const built = await buildHost(runNix, flake, "web-01");
    assert.match(built.storePath, /^\/nix\/store\/[0-9a-z]{32}-nixos-system-web-01$/);
    assert.equal(built.platform, SYSTEM);
    assert.ok(existsSync(join(built.storePath, "name")));
    const meta = await flakeRevision(runNix, flake);
    assert.equal(meta.url, flake);
    const cache = join(dir, "cache");
    await pushToCache(runNix, `file://${cache}`, [built.storePath]);
    const narinfo = `${built.storePath.slice(11, 43)}.narinfo`;
    assert.ok(existsSync(join(cache, narinfo)), `expected ${narinfo} in the cache`);
  });

  it("reports nix's own error for a broken flake or an unknown host", async (t) => {
    const dir = tempDir(t);
    mkdirSync(join(dir, "bad"));
    writeFileSync(join(dir, "bad", "flake.nix"), "{ outputs = { self }: { nixosConfigurations = 42; }; }");
    await assert.rejects(
      flakeHosts(runNix, `path:${join(dir, "bad")}`),
      (e: Error) => e instanceof CliFailure && /nix eval/.test(e.message),
    );
    const flake = writeFlake(join(dir, "ok"), "x");
    await assert.rejects(
      buildHost(runNix, flake, "nope-01"),
      (e: Error) => e instanceof CliFailure && /nope-01/.test(e.message),
    );
  });

  it("gives up on a hung nix at its deadline", async () => {
    // `nix repl` waits for input forever; the deadline must end it.
    await assert.rejects(runNix(["repl"], { timeoutMs: 300 }), /timed out after/);
  });

  it("nix is on PATH for these tests", () => {
    assert.match(execFileSync("nix", ["--version"]).toString(), /nix \(Nix\) /);
  });
});
