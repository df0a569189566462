/**
 * nix/package.nix, nix/npm-lock-for-platform.nix and flake.nix, evaluated with real Nix and
 * stand-ins for nixpkgs (which cannot be fetched here): what they decide, not a build.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { EVAL_NIX, evalJson, evalModules, REPO } from "./nix-eval.js";

const PACKAGE_EVAL = join(REPO, "test/nix/package-eval.nix");
const packageJson = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as {
  name: string;
  version: string;
  bin?: string | Record<string, string>;
};
const lock = JSON.parse(readFileSync(join(REPO, "package-lock.json"), "utf8")) as {
  packages: Record<
    string,
    { optional?: boolean; devOptional?: boolean; resolved?: string; os?: string[]; cpu?: string[] }
  >;
};

interface PackageEval {
  pname: string;
  version: string;
  nodejs: string;
  expectedNodejs: string;
  npmConfigHook: string;
  npmBuildScript: string;
  postInstall: string;
  installCheckPhase: string;
  doInstallCheck: boolean;
  env: Record<string, string>;
  sourceFiles: string[];
  sourceRoot: string;
  npmRoot: string;
  packageName: string;
  fetched: Record<string, boolean>;
  flakeInputs: Record<string, string>;
  overlay: { nixfleet: { calledFile: string } };
}

function packageEval(cpu = process.arch === "arm64" ? "arm64" : "x64"): Promise<PackageEval> {
  return evalJson<PackageEval>(`import ${PACKAGE_EVAL} { cpu = "${cpu}"; }`);
}

describe("nix/package.nix", () => {
  it("builds the package.json name and version with one node, importNpmLock and `npm run build`", async () => {
    const p = await packageEval();
    assert.equal(p.pname, packageJson.name);
    assert.equal(p.version, packageJson.version);
    assert.equal(p.packageName, packageJson.name);
    assert.equal(p.nodejs, p.expectedNodejs, "built with the node it runs on");
    // node-gyp compiles better-sqlite3 against the headers of the node that runs it.
    assert.equal(p.npmConfigHook, `importNpmLock hooks built with ${p.expectedNodejs}`);
    const old = await evalJson<PackageEval>(`import ${PACKAGE_EVAL} { stockHook = true; }`);
    assert.match(old.npmConfigHook, /the stock importNpmLock\.npmConfigHook/, "falls back on other layouts");
    assert.equal(p.npmBuildScript, "build");
    assert.equal(p.env["npm_config_build_from_source"], "true", "better-sqlite3 compiles from source");
    assert.equal(p.doInstallCheck, true);
    assert.match(p.installCheckPhase, /require\("better-sqlite3"\)/);
    assert.match(
      p.installCheckPhase,
      /dist\/dashboard\/\$f/,
      "the dashboard bundle is checked in the output",
    );
  });

  it("wraps every binary with that node and the runtime PATH (appended, so a unit's path wins)", async () => {
    const p = await packageEval();
    const bins =
      packageJson.bin === undefined
        ? {
            nixfleet: "dist/cli/main.js",
            "nixfleet-agent": "dist/agent/main.js",
            "nixfleet-control-plane": "dist/control-plane/main.js",
          }
        : typeof packageJson.bin === "string"
          ? { [packageJson.name]: packageJson.bin }
          : packageJson.bin;
    for (const [name, file] of Object.entries(bins)) {
      const wrapper = new RegExp(
        `makeWrapper ${p.expectedNodejs}/bin/node "\\$out/bin/${name}" \\\\\\n\\s+--add-flags "\\$pkgdir/${file.replace(/^\.\//, "")}" \\\\\\n\\s+--suffix PATH : (\\S+)`,
      );
      const m = wrapper.exec(p.postInstall);
      assert.ok(m, `no wrapper for ${name} → ${file} in:\n${p.postInstall}`);
      for (const tool of ["nix", "systemd", "coreutils", "util-linux", "bash"]) {
        assert.match(m[1] ?? "", new RegExp(`-${tool}-[^/]*/bin`), `${tool} missing from ${name}'s PATH`);
      }
      assert.match(p.installCheckPhase, new RegExp(`\\$out/bin/${name} --help \\| grep -q Usage:`));
    }
    for (const main of ["agent", "control-plane", "cli"]) {
      assert.ok(
        existsSync(join(REPO, "src", main, "main.ts")),
        `src/${main}/main.ts (→ dist/${main}/main.js)`,
      );
    }
  });

  it("builds from the sources the build reads only (tests and docs changes don't rebuild)", async () => {
    const p = await packageEval();
    assert.equal(p.sourceRoot, REPO);
    const rel = p.sourceFiles.map((f) => f.slice(REPO.length + 1));
    for (const needed of [
      "package.json",
      "package-lock.json",
      "tsconfig.json",
      "tsconfig.build.json",
      "src",
      "scripts/build-dashboard.mjs",
      "scripts/build-agent.mjs",
    ]) {
      assert.ok(rel.includes(needed), `${needed} is in the source set`);
    }
    for (const excluded of ["test", "docs", "node_modules", "nix", ".git"]) {
      assert.ok(!rel.includes(excluded), `${excluded} is not in the source set`);
    }
  });
});

describe("nix/npm-lock-for-platform.nix", () => {
  it("downloads exactly what npm installed here, and none of the other platforms' binaries", async () => {
    const { fetched } = await packageEval();
    assert.deepEqual(
      Object.keys(fetched).sort(),
      Object.keys(lock.packages)
        .filter((k) => k !== "")
        .sort(),
    );
    let skipped = 0;
    for (const [path, wanted] of Object.entries(fetched)) {
      const entry = lock.packages[path]!;
      // node_modules here is npm's own install for this platform: the reference.
      const installed = existsSync(join(REPO, path));
      if (installed) assert.ok(wanted, `${path} is installed by npm here but would not be fetched`);
      if (!wanted) {
        skipped++;
        assert.ok(entry.optional || entry.devOptional, `${path} is not optional but would not be fetched`);
        assert.ok(!installed, `${path} is skipped but npm installed it`);
      } else {
        assert.ok(entry.resolved, `${path} is fetched but has no resolved URL`);
      }
    }
    assert.ok(skipped > 0, "the lock lists other platforms' optional binaries; none were skipped");
  });

  it("keeps the other architecture's binaries for that architecture", async () => {
    const arm = await packageEval("arm64");
    const x64 = await packageEval("x64");
    const armOnly = Object.keys(arm.fetched).filter((k) => arm.fetched[k] && !x64.fetched[k]);
    const x64Only = Object.keys(x64.fetched).filter((k) => x64.fetched[k] && !arm.fetched[k]);
    assert.ok(armOnly.length > 0 && x64Only.length > 0);
    for (const k of armOnly) assert.deepEqual(lock.packages[k]?.cpu, ["arm64"], k);
    for (const k of x64Only) assert.deepEqual(lock.packages[k]?.cpu, ["x64"], k);
  });

  it("follows npm's os/cpu/libc rules, negations included", async () => {
    const result = await evalJson<Record<string, boolean>>(`
      let
        filter = import ${REPO}/nix/npm-lock-for-platform.nix;
        pkg = extra: { optional = true; resolved = "https://r/x.tgz"; integrity = "sha512-x"; } // extra;
        out = (filter {
          platform = { os = "linux"; cpu = "x64"; libc = "glibc"; };
          lock.packages = {
            "" = { name = "root"; };
            "node_modules/any" = pkg { };
            "node_modules/linux" = pkg { os = [ "linux" ]; };
            "node_modules/darwin" = pkg { os = [ "darwin" ]; };
            "node_modules/not-win" = pkg { os = [ "!win32" ]; };
            "node_modules/not-linux" = pkg { os = [ "!linux" ]; };
            "node_modules/arm" = pkg { cpu = [ "arm64" ]; };
            "node_modules/musl" = pkg { os = [ "linux" ]; libc = [ "musl" ]; };
            "node_modules/glibc" = pkg { os = [ "linux" ]; libc = [ "glibc" ]; };
            "node_modules/required-darwin" = { resolved = "https://r/y.tgz"; integrity = "sha512-y"; os = [ "darwin" ]; };
          };
        }).packages;
      in builtins.mapAttrs (_: p: p ? resolved && p ? integrity) (removeAttrs out [ "" ])`);
    assert.deepEqual(result, {
      "node_modules/any": true,
      "node_modules/linux": true,
      "node_modules/darwin": false,
      "node_modules/not-win": true,
      "node_modules/not-linux": false,
      "node_modules/arm": false,
      "node_modules/musl": false,
      "node_modules/glibc": true,
      // Not optional: npm would refuse it anyway; it is left alone.
      "node_modules/required-darwin": true,
    });
  });
});

describe("flake.nix", () => {
  it("has the documented outputs, and its nixosModules and overlay never touch nixpkgs", async () => {
    const names = await evalJson<string[]>(`(import ${EVAL_NIX} { }).flakeOutputNames`);
    for (const output of ["packages", "nixosModules", "overlays", "devShells", "checks"]) {
      assert.ok(names.includes(output), `flake output ${output}`);
    }
    assert.deepEqual(await evalJson(`(import ${EVAL_NIX} { }).flakeModuleNames`), [
      "agent",
      "control-plane",
      "default",
    ]);
    const p = await packageEval();
    assert.deepEqual(p.flakeInputs, { nixpkgs: "github:NixOS/nixpkgs/nixos-unstable" });
    assert.equal(p.overlay.nixfleet.calledFile, join(REPO, "nix/package.nix"));
  });

  it("nixosModules.default brings both services", async () => {
    const modules = [
      `{ services.nixfleet-agent = { enable = true; controlPlaneUrl = "https://cp"; };
         services.nixfleet-control-plane = { enable = true; allowInsecure = true; }; }`,
    ];
    assert.deepEqual(await evalModules("services", { modules, viaFlake: true }), [
      "nixfleet-agent",
      "nixfleet-control-plane",
    ]);
    assert.deepEqual(await evalModules("assertions", { modules, viaFlake: true }), []);
  });

  it("the checks include the NixOS VM test", () => {
    const flake = readFileSync(join(REPO, "flake.nix"), "utf8");
    assert.match(flake, /import \.\/nix\/tests/);
    assert.ok(existsSync(join(REPO, "nix/tests/default.nix")));
    assert.ok(existsSync(join(REPO, "nix/tests/fleet.nix")));
  });
});
