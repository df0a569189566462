# The NixOS options that nix/modules/*.nix define or read, declared with nixpkgs' names, types
# and defaults (nixos/modules/system/boot/systemd.nix + lib/systemd-unit-options.nix,
# misc/assertions.nix, config/users-groups.nix, system/etc/etc.nix, services/networking/firewall.nix,
# config/system-path.nix, config/nix.nix, services/databases/postgresql.nix). Only this subset exists, so a typo in a module's option
# name fails here as it would on a real host ("The option `…' does not exist").
{ lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  unitOption = types.anything;
  serviceOptions = {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      description = mkOption {
        type = types.str;
        default = "";
      };
      documentation = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      wantedBy = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      requiredBy = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      wants = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      requires = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      after = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      before = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      bindsTo = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      partOf = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      conflicts = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      path = mkOption {
        type = types.listOf (types.either types.package types.str);
        default = [ ];
      };
      environment = mkOption {
        type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]));
        default = { };
      };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      reloadTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      reloadIfChanged = mkOption {
        type = types.bool;
        default = false;
      };
      stopIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      startLimitIntervalSec = mkOption {
        type = types.int;
      };
      startLimitBurst = mkOption {
        type = types.int;
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      serviceConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
      preStart = mkOption {
        type = types.lines;
        default = "";
      };
    };
  };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    networking.hostName = mkOption {
      type = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$";
      default = "nixos";
    };
    networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };
    systemd.package = mkOption {
      type = types.package;
      default = pkgs.systemd;
    };
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule serviceOptions);
      default = { };
    };
    nix.package = mkOption {
      type = types.package;
      default = pkgs.nix;
    };
    environment.etc = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            source = mkOption { type = types.path; };
            text = mkOption {
              type = types.nullOr types.lines;
              default = null;
            };
            mode = mkOption {
              type = types.str;
              default = "symlink";
            };
            user = mkOption {
              type = types.str;
              default = "+0";
            };
            group = mkOption {
              type = types.str;
              default = "+0";
            };
          };
        }
      );
      default = { };
    };
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    users.users = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            isSystemUser = mkOption {
              type = types.bool;
              default = false;
            };
            group = mkOption {
              type = types.str;
              default = "";
            };
            description = mkOption {
              type = types.str;
              default = "";
            };
            home = mkOption {
              type = types.str;
              default = "/var/empty";
            };
          };
        }
      );
      default = { };
    };
    users.groups = mkOption {
      type = types.attrsOf (types.submodule { options = { }; });
      default = { };
    };
    # services/databases/postgresql.nix (NixOS 23.11 and later: ensureDBOwnership).
    services.postgresql = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      ensureDatabases = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      ensureUsers = mkOption {
        type = types.listOf (
          types.submodule {
            options = {
              name = mkOption { type = types.str; };
              ensureDBOwnership = mkOption {
                type = types.bool;
                default = false;
              };
            };
          }
        );
        default = [ ];
      };
    };
  };
}
