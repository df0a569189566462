# The agent's JSON configuration, rendered from `config.services.nixfleet-agent`.
#
# Pure (builtins only, no lib, no pkgs) so the Nix test tier can evaluate it on its own and feed
# the result to the agent's real loader (`parseAgentConfig` in src/agent/config.ts): the JSON keys
# ARE the option names, and the agent rejects unknown keys, so this is the one place that decides
# what reaches the agent. Every key is written explicitly — the module's documented defaults, not
# the agent's built-in ones, are what a NixOS host runs — and the contract test checks that both
# sets of defaults agree.
#
# Module-only options (enable, package, metricsOpenFirewall, path, persistence) are not rendered.
cfg:
let
  systemdCheck = c: {
    inherit (c) units timeout interval;
  };
  httpCheck = c: {
    inherit (c)
      url
      expectedStatus
      timeout
      interval
      ;
  };
  commandCheck = c: {
    inherit (c)
      name
      command
      timeout
      interval
      ;
  };
in
{
  inherit (cfg)
    controlPlaneUrl
    machineId
    tags
    pollInterval
    retryInterval
    healthInterval
    metricsPort
    metricsAddress
    dbPath
    allowInsecure
    cacheUrl
    dryRun
    protocol
    verifyTimeout
    activationTimeout
    activation
    fetchTimeout
    requestTimeout
    heartbeatInterval
    logLevel
    ;
  healthChecks = {
    systemd = map systemdCheck cfg.healthChecks.systemd;
    http = map httpCheck cfg.healthChecks.http;
    command = map commandCheck cfg.healthChecks.command;
  };
  tls = {
    inherit (cfg.tls) caCert clientCert clientKey;
  };
}
