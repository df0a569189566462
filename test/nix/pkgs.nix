# A stand-in for the few packages and builders the modules take from `pkgs`. Packages are
# attribute sets that look like derivations (type + outPath), so they interpolate into strings
# and pass `types.package`; the builders return such sets and keep their inputs (`text`,
# `script`) so the tests can read what would have been written to the store.
let
  fake = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/${builtins.hashString "sha256" name}-${name}";
  };
  # Real store paths use 32 base-32 characters; the tests only need distinct absolute paths.
  stored =
    name: content: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" content)}-${name}";
    }
    // extra;
in
{
  nixfleet = fake "nixfleet-0.1.0";
  nix = fake "nix-2.28.3";
  systemd = fake "systemd-257.5";
  coreutils = fake "coreutils-9.7";
  util-linux = fake "util-linux-2.41";
  bash = fake "bash-5.2p37";
  curl = fake "curl-8.13.0";
  writeText = name: text: stored name text { inherit text; };
  writeShellScript = name: script: stored name script { inherit script; };
  writeShellScriptBin = name: script: stored name script { inherit script; };
  stdenv.hostPlatform.system = "x86_64-linux";
}
