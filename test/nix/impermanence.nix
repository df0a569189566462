# The part of impermanence's NixOS module that nixfleet touches: `environment.persistence.<root>`.
# Imported only by the tests of an "impermanence host"; elsewhere the option must not exist.
{ lib, ... }:
let
  inherit (lib) mkOption types;
in
{
  options.environment.persistence = mkOption {
    type = types.attrsOf (
      types.submodule {
        options = {
          directories = mkOption {
            type = types.listOf (types.either types.str types.attrs);
            default = [ ];
          };
          files = mkOption {
            type = types.listOf (types.either types.str types.attrs);
            default = [ ];
          };
        };
      }
    );
    default = { };
  };
}
