# Stands in for nixpkgs' pkgs/build-support/node/import-npm-lock/hooks (see package-eval.nix):
# records which nodejs the hooks were built with.
{ nodejs, ... }:
{
  npmConfigHook = "importNpmLock hooks built with ${toString nodejs}";
}
