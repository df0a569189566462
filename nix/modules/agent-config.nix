# The agent's JSON configuration, rendered from `config.services.nixfleet-agent`.
#
# Pure (builtins only, no lib, no pkgs) so the Nix test tier can evaluate it on its own and feed
# the result to the agent's real loader (`parseAgentConfig` in src/agent/config.ts): the JSON keys
# ARE the option names, and the agent rejects unknown keys, so this is the one place that decides
# what reaches the agent. Every key is written — the module's documented defaults, not the
# agent's built-in ones, are what a NixOS host runs — and the contract test checks that both sets
# of defaults agree.
cfg:
let
  # Options of the NixOS module itself, not of the agent: never rendered.
  moduleOnly = [
    "enable"
    "package"
    "metricsOpenFirewall"
    "path"
    "persistence"
  ];
  # A check entry is a submodule value: its fields, without the module system's own `_module`.
  entry = c: builtins.removeAttrs c [ "_module" ];
in
# Every other option is rendered under its own name: the option list is written once, in
# agent.nix, and test/nix/agent-module.test.ts checks it against the agent's declarations.
builtins.removeAttrs cfg (moduleOnly ++ [ "healthChecks" ])
// {
  healthChecks = builtins.mapAttrs (_kind: map entry) cfg.healthChecks;
}
