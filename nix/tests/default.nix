# NixOS VM tests (QEMU; KVM strongly recommended), run by `nix flake check` or
# `nix build .#checks.x86_64-linux.vm-fleet`. They cannot run on machines without nixpkgs or
# KVM, such as this project's CI; users' CI runs them.
{
  pkgs,
  nixfleetModules,
  nixfleetPackage,
}:
{
  vm-fleet = import ./fleet.nix { inherit pkgs nixfleetModules nixfleetPackage; };
}
