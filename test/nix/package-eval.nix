# Evaluates nix/package.nix and the flake's overlay with stand-ins for buildNpmPackage,
# importNpmLock and the packages, returning the arguments the package would be built with.
# (The real build needs nixpkgs; this checks what the expression decides: version, node, lock,
# wrappers, runtime PATH, source set.)
{
  # npm's names for the platform under test
  os ? "linux",
  cpu ? "x64",
  # a nixpkgs without import-npm-lock/hooks where the package expects it
  stockHook ? false,
}:
let
  stub = import ./lib.nix;
  pkgs = import ./pkgs.nix;
  fake = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/${builtins.hashString "sha256" name}-${name}";
  };
  lib = stub // {
    importJSON = path: builtins.fromJSON (builtins.readFile path);
    concatStrings = builtins.concatStringsSep "";
    fileset = {
      toSource =
        { root, fileset }:
        {
          inherit root;
          files = map toString (builtins.filter (f: f != null) fileset);
        };
      unions = files: files;
      maybeMissing = path: if builtins.pathExists path then path else null;
    };
    licenses.mit = "mit";
    platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
  };
  nodejs = fake "nodejs-22.14.0";
  args = import ../../nix/package.nix {
    inherit lib;
    stdenv.hostPlatform = {
      node = {
        platform = os;
        arch = cpu;
      };
      isMusl = false;
    };
    buildNpmPackage = a: a;
    importNpmLock = {
      __functor = _: a: { importNpmLockArgs = a; };
      npmConfigHook = "the stock importNpmLock.npmConfigHook (nixpkgs' default nodejs)";
    };
    # nixpkgs' source tree: only the hooks file the package builds with its own nodejs.
    path = if stockHook then /nonexistent/nixpkgs else ./fake-nixpkgs;
    callPackages = fn: extra: import fn extra;
    inherit nodejs;
    makeWrapper = fake "make-wrapper";
    inherit (pkgs)
      nix
      systemd
      coreutils
      util-linux
      bash
      ;
  };
  lock = args.npmDeps.importNpmLockArgs.packageLock;
  flake = import ../../flake.nix;
  outputs = flake.outputs {
    self = outputs;
    nixpkgs = throw "the overlay must not need the nixpkgs input";
  };
in
{
  inherit (args)
    pname
    version
    npmBuildScript
    postInstall
    installCheckPhase
    env
    doInstallCheck
    meta
    ;
  nodejs = toString args.nodejs;
  expectedNodejs = toString nodejs;
  npmConfigHook = args.npmConfigHook;
  sourceFiles = args.src.files;
  sourceRoot = toString args.src.root;
  npmRoot = toString args.npmDeps.importNpmLockArgs.npmRoot.root;
  packageName = args.npmDeps.importNpmLockArgs.package.name;
  # package path in the lock → does importNpmLock get a download for it?
  fetched = builtins.mapAttrs (_: p: p ? resolved) (removeAttrs lock.packages [ "" ]);
  lockVersion = lock.lockfileVersion;
  flakeInputs = builtins.mapAttrs (_: i: i.url) flake.inputs;
  overlay = outputs.overlays.default {
    callPackage = fn: extra: {
      calledFile = toString fn;
      inherit extra;
    };
  } { };
}
