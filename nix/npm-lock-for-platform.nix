# package-lock.json as importNpmLock should see it for one platform.
#
# The lock lists the prebuilt binaries of every platform as optional packages (typescript's
# native compiler, esbuild, buf, biome: ~15 platforms each, tens of MB apiece). importNpmLock
# downloads every entry that has a `resolved` URL, yet `npm ci` installs only those whose
# os/cpu/libc match. Removing `resolved`/`integrity` from the optional entries of *other*
# platforms keeps the lock in sync with package.json (npm ci still accepts it: it skips those
# entries without fetching them) and saves hundreds of MB of downloads per build.
#
# Pure: builtins only, so the Nix test tier checks it against the real lock and node_modules.
{
  lock,
  # npm's names: os = process.platform ("linux"), cpu = process.arch ("x64", "arm64"),
  # libc = "glibc" or "musl".
  platform,
}:
let
  inherit (builtins) elem filter substring;
  negated = x: substring 0 1 x == "!";
  # npm's rule for os/cpu/libc lists: "!x" excludes x; plain entries, if any, must include it.
  allows =
    list: value:
    let
      positives = filter (x: !negated x) list;
    in
    !(elem "!${value}" list) && (positives == [ ] || elem value positives);
  optional = pkg: pkg.optional or false || pkg.devOptional or false;
  fitsHere =
    pkg:
    allows (pkg.os or [ ]) platform.os
    && allows (pkg.cpu or [ ]) platform.cpu
    && (platform.os != "linux" || allows (pkg.libc or [ ]) platform.libc);
in
lock
// {
  packages = builtins.mapAttrs (
    name: pkg:
    if name == "" || !(optional pkg) || fitsHere pkg then
      pkg
    else
      removeAttrs pkg [
        "resolved"
        "integrity"
      ]
  ) lock.packages;
}
