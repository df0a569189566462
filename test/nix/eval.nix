# Evaluates the NixOS modules in nix/modules/ together with the test's own configuration
# modules and returns what the tests assert on, as plain JSON-able data.
#
#   nix-instantiate --eval --strict --json --expr \
#     '(import /abs/test/nix/eval.nix { modules = [ { services.nixfleet-agent = { … }; } ]; }).agent'
#
# `lib` defaults to the stub in this folder; pass a real nixpkgs lib (`lib = import
# <nixpkgs/lib>`) to check the modules and the stub against the real module system.
{
  lib ? import ./lib.nix,
  pkgs ? import ./pkgs.nix,
  modules ? [ ],
  # Declare impermanence's environment.persistence (only hosts that import it have it).
  impermanence ? false,
  # Evaluate through the flake's nixosModules.default instead of the module files.
  viaFlake ? false,
}:
let
  flake = import ../../flake.nix;
  flakeOutputs = flake.outputs {
    self = flakeOutputs;
    # The outputs under test never touch nixpkgs; anything that does would fail loudly here.
    nixpkgs = throw "the flake's nixosModules/overlays must not need the nixpkgs input at evaluation";
  };
  nixfleetModules =
    if viaFlake then
      [ flakeOutputs.nixosModules.default ]
    else
      [
        ../../nix/modules/agent.nix
        ../../nix/modules/control-plane.nix
      ];

  eval = lib.evalModules {
    modules = [ ./nixos.nix ] ++ nixfleetModules ++ lib.optional impermanence ./impermanence.nix ++ modules;
    specialArgs = { inherit pkgs; };
  };
  c = eval.config;

  unit =
    name:
    let
      s = c.systemd.services.${name};
    in
    {
      inherit (s)
        description
        wantedBy
        wants
        after
        environment
        restartIfChanged
        reloadIfChanged
        stopIfChanged
        serviceConfig
        ;
      # Declared without a default: reading it undefined throws, which tryEval turns into null.
      startLimitIntervalSec =
        let
          r = builtins.tryEval s.startLimitIntervalSec;
        in
        if r.success then r.value else null;
      path = map toString s.path;
      restartTriggers = map toString s.restartTriggers;
      reloadTriggers = map toString s.reloadTriggers;
    };

  agentCfg = c.services.nixfleet-agent;
  cpCfg = c.services.nixfleet-control-plane;
  etc = c.environment.etc;
in
{
  assertions = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
  inherit (c) warnings;
  firewall = c.networking.firewall.allowedTCPPorts;
  persistence = c.environment.persistence or null;
  services = builtins.attrNames c.systemd.services;
  systemPackages = map (p: p.name or (toString p)) c.environment.systemPackages;
  users = builtins.attrNames c.users.users;

  agent =
    if !agentCfg.enable then
      null
    else
      {
        # The file the unit points at, as written to the store.
        configFile = toString etc."nixfleet/agent.json".source;
        json = etc."nixfleet/agent.json".source.text;
        unit = unit "nixfleet-agent";
      };

  controlPlane =
    if !cpCfg.enable then
      null
    else
      {
        unit = unit "nixfleet-control-plane";
        requires = c.systemd.services.nixfleet-control-plane.requires;
        postgresql = {
          inherit (c.services.postgresql) enable ensureDatabases;
          ensureUsers = map (u: { inherit (u) name ensureDBOwnership; }) c.services.postgresql.ensureUsers;
        };
        user = c.users.users.nixfleet-cp;
        adminTool = (builtins.head c.environment.systemPackages).script;
      };

  # Every option both modules declare, for docs/nixos.md (the stub lib only).
  optionDocs =
    let
      # Only nixfleet's own: nixos.nix declares some of NixOS's services too (postgresql).
      all = builtins.filter (o: lib.hasPrefix "services.nixfleet-" o.name) (
        lib.optionsToList eval.options.services
      );
    in
    map (
      o:
      o
      // {
        default = if o ? defaultText then null else o.default or null;
        hasDefault = o ? default || o ? defaultText;
        defaultText = if o ? defaultText then o.defaultText.text else null;
        example =
          if !(o ? example) then
            null
          else if (o.example._type or "") == "literalExpression" then
            { literal = o.example.text; }
          else
            { value = o.example; };
      }
    ) all;

  flakeOutputNames = builtins.attrNames flakeOutputs;
  flakeModuleNames = builtins.attrNames flakeOutputs.nixosModules;
}
