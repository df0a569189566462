{
  description = "nixfleet: pull-based deployment agent for NixOS fleets, its control plane and CLI";

  # Hosts usually pin their own nixpkgs: `inputs.nixfleet.inputs.nixpkgs.follows = "nixpkgs";`
  # (the package builds with any nixpkgs that has importNpmLock and lib.fileset, 24.05 or newer).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      # The modules take the package from `pkgs.nixfleet` (this overlay) when present, else
      # build nix/package.nix with the host's own nixpkgs — no overlay needed. They never read
      # the nixpkgs input, so importing them costs nothing.
      nixosModules = {
        agent = ./nix/modules/agent.nix;
        control-plane = ./nix/modules/control-plane.nix;
        default = {
          imports = [
            ./nix/modules/agent.nix
            ./nix/modules/control-plane.nix
          ];
        };
      };

      overlays.default = final: _prev: { nixfleet = final.callPackage ./nix/package.nix { }; };

      packages = forAllSystems (pkgs: rec {
        nixfleet = pkgs.callPackage ./nix/package.nix { };
        default = nixfleet;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          # What `npm ci && npm test` needs: node + a C++ toolchain for better-sqlite3, nix for the
          # agent's real toolchain and the Nix tests, openssl for test certificates, python3
          # with grpcio for the interop tests.
          packages = [
            pkgs.nodejs_22
            (pkgs.python3.withPackages (ps: [
              ps.grpcio
              ps.grpcio-tools
            ]))
            pkgs.nix
            pkgs.openssl
            pkgs.util-linux
            pkgs.curl
            pkgs.git
          ];
          NIX_CONFIG = "experimental-features = nix-command flakes";
        };
      });

      # `nix flake check` builds the package and runs the NixOS VM tests (KVM recommended).
      checks = forAllSystems (
        pkgs:
        {
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        }
        // import ./nix/tests {
          inherit pkgs;
          nixfleetModules = self.nixosModules;
          nixfleetPackage = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        }
      );
    };
}
