# The nixfleet npm package: nixfleet-agent, nixfleet-control-plane and the nixfleet CLI.
#
# Dependencies come from package-lock.json through importNpmLock (every entry records `resolved`
# and `integrity`), so there is no npmDepsHash to keep in sync: a lock change is picked up as is.
# better-sqlite3 is a native addon; it is compiled here from source against `nodejs`, the same
# node the wrappers run (an addon built for another node ABI fails to load). `nodejs` is
# nixpkgs' default (an LTS, 22 or newer); `.override { nodejs = pkgs.nodejs_22; }` picks another.
{
  lib,
  stdenv,
  buildNpmPackage,
  importNpmLock,
  callPackages,
  path,
  nodejs,
  makeWrapper,
  nix,
  systemd,
  coreutils,
  util-linux,
  bash,
}:
let
  root = ../.;
  packageJson = lib.importJSON (root + "/package.json");

  packageLock = import ./npm-lock-for-platform.nix {
    lock = lib.importJSON (root + "/package-lock.json");
    platform = {
      os = stdenv.hostPlatform.node.platform;
      cpu = stdenv.hostPlatform.node.arch;
      libc = if stdenv.hostPlatform.isMusl then "musl" else "glibc";
    };
  };

  # package.json's `bin` (a string means one binary named after the package); until it has one,
  # the three compiled entry points.
  bins =
    if packageJson ? bin then
      (if builtins.isString packageJson.bin then { ${packageJson.name} = packageJson.bin; } else packageJson.bin)
    else
      {
        nixfleet-agent = "dist/agent/main.js";
        nixfleet-control-plane = "dist/control-plane/main.js";
        nixfleet = "dist/cli/main.js";
      };

  # What the programs run: nix/nix-env/nix-store, systemd-run/systemctl, flock, /bin/sh-style
  # shells, coreutils. Appended to PATH, so a NixOS unit's own `path` (the host's nix and
  # systemd, matching the daemon and PID 1) takes precedence.
  runtimePath = [
    nix
    systemd
    coreutils
    util-linux
    bash
  ];

  # importNpmLock's hook points node-gyp at the headers of the nodejs *it* was built with
  # (nixpkgs' default), so with another `nodejs` the addon would be compiled for the wrong ABI.
  # Build the same hooks with our `nodejs` (from nixpkgs' own source; older layouts fall back
  # to the stock hook, right whenever `nodejs` is the default).
  importNpmLockHooks = path + "/pkgs/build-support/node/import-npm-lock/hooks";
  npmConfigHook =
    if builtins.pathExists importNpmLockHooks then
      (callPackages importNpmLockHooks { inherit nodejs; }).npmConfigHook
    else
      importNpmLock.npmConfigHook;

  src = lib.fileset.toSource {
    inherit root;
    # Only what the build reads: editing tests or docs does not rebuild the package.
    fileset = lib.fileset.unions [
      (root + "/package.json")
      (root + "/package-lock.json")
      (root + "/tsconfig.json")
      (root + "/tsconfig.build.json")
      (root + "/src")
      # The bundler steps of `npm run build` (esbuild, a devDependency): the dashboard, the agent.
      (root + "/scripts/build-dashboard.mjs")
      (root + "/scripts/build-agent.mjs")
      (lib.fileset.maybeMissing (root + "/bin"))
      (lib.fileset.maybeMissing (root + "/LICENSE"))
    ];
  };
in
buildNpmPackage {
  pname = packageJson.name;
  inherit (packageJson) version;
  inherit nodejs src;

  npmDeps = importNpmLock {
    npmRoot = src;
    package = packageJson;
    inherit packageLock;
  };
  inherit npmConfigHook;

  nativeBuildInputs = [ makeWrapper ];

  # better-sqlite3: skip prebuild-install's download attempt (no network in the sandbox) and
  # compile with node-gyp against this nodejs (npmConfigHook points it at the node headers).
  env.npm_config_build_from_source = "true";

  # `npm run build` = tsc -p tsconfig.build.json → dist/{agent,control-plane,cli}/main.js, then
  # scripts/build-agent.mjs bundles the agent into dist/agent/main.js, and
  # scripts/build-dashboard.mjs bundles the web dashboard (preact) → dist/dashboard, which the
  # control plane serves with --dashboard-listen.
  npmBuildScript = "build";

  # npmInstallHook copies what `npm pack` would publish plus the production node_modules into
  # $out/lib/node_modules/nixfleet. Its bin wrappers are replaced by ours: they must run exactly
  # `nodejs` (the ABI better-sqlite3 was compiled for) and carry the runtime PATH.
  postInstall = ''
    pkgdir="$out/lib/node_modules/${packageJson.name}"
    rm -rf "$out/bin"
    mkdir -p "$out/bin"
    ${lib.concatStrings (
      lib.mapAttrsToList (name: file: ''
        test -f "$pkgdir/${file}" || { echo "package.json bin ${name}: $pkgdir/${file} is missing" >&2; exit 1; }
        makeWrapper ${nodejs}/bin/node "$out/bin/${name}" \
          --add-flags "$pkgdir/${file}" \
          --suffix PATH : ${lib.makeBinPath runtimePath}
      '') bins
    )}
  '';

  doInstallCheck = true;
  installCheckPhase = ''
    runHook preInstallCheck
    # The native addon loads in the node the wrappers use, and every program starts.
    (cd "$out/lib/node_modules/${packageJson.name}" && ${nodejs}/bin/node -e 'new (require("better-sqlite3"))(":memory:").prepare("select 1").get()')
    # The dashboard bundle shipped next to the server that serves it.
    for f in index.html app.js app.css; do
      test -s "$out/lib/node_modules/${packageJson.name}/dist/dashboard/$f" || { echo "dist/dashboard/$f is missing: the dashboard was not bundled" >&2; exit 1; }
    done
    # (grep: a launcher that imports the entry point without running it would exit 0 silently.)
    ${lib.concatStrings (lib.mapAttrsToList (name: _: "$out/bin/${name} --help | grep -q Usage:\n") bins)}
    runHook postInstallCheck
  '';

  passthru = {
    inherit nodejs;
  };

  meta = {
    description = "Pull-based deployment agent for NixOS fleets, its control plane, and the nixfleet CLI";
    license = lib.licenses.mit;
    mainProgram = "nixfleet";
    platforms = lib.platforms.linux;
  };
}
