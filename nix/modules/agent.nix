# services.nixfleet-agent: the nixfleet deployment agent on a NixOS host.
#
# The option names are the agent's JSON configuration keys (docs/nixos.md lists them all; the
# Nix test tier checks that list against this file and feeds the rendered JSON to the agent's
# own config loader).
{
  config,
  lib,
  pkgs,
  options,
  ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.services.nixfleet-agent;

  # Seconds as a number, or a string with a unit ("500ms", "30s", "5m", "1.5h", "1d", "2 days"):
  # a lower-case subset of what the agent's one duration parser (src/common/duration.ts, the `ms`
  # library) reads, so whatever evaluates here the agent accepts too —
  # test/nix/agent-module.test.ts runs samples through both. Zero is refused here as by the agent;
  # the agent's upper bound (a week) is left to it.
  durationUnit = "ms|msecs?|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?|d|days?";
  duration =
    types.either (types.addCheck types.number (x: x > 0)) (
      types.addCheck (types.strMatching "[0-9]+(\\.[0-9]+)? *(${durationUnit})?") (
        s: builtins.match "[0.]* *[a-z]*" s == null
      )
    )
    // {
      description = "positive number of seconds, or a duration string such as \"30s\", \"5m\", \"1h\"";
    };

  durationOption =
    default: description:
    mkOption {
      type = duration;
      inherit default description;
    };

  # Same rules as src/common/ids.ts, so a bad value fails at evaluation, not at agent start.
  machineIdType = types.strMatching "[A-Za-z0-9][A-Za-z0-9._-]{0,127}" // {
    description = "machine id (letters, digits, '.', '_', '-'; starting with a letter or digit; at most 128 characters)";
  };
  tagType = types.strMatching "[A-Za-z0-9][A-Za-z0-9._:=-]{0,63}" // {
    description = "tag (letters, digits, '.', '_', ':', '=', '-'; starting with a letter or digit; at most 64 characters)";
  };
  absolutePath = types.strMatching "/.*" // {
    description = "absolute path (a string)";
  };

  systemdCheck = types.submodule {
    options = {
      units = mkOption {
        type = types.nonEmptyListOf (types.strMatching "[A-Za-z0-9:_.@\\\\][-A-Za-z0-9:_.@\\\\]*");
        example = [
          "nginx.service"
          "postgresql.service"
        ];
        description = "systemd units that must all be `active` (`systemctl is-active`).";
      };
      timeout = durationOption 5 "Seconds one `systemctl is-active` may take.";
      interval = durationOption 10 "Seconds between runs of this check in periodic health reports.";
    };
  };

  httpCheck = types.submodule {
    options = {
      url = mkOption {
        type = types.strMatching "https?://.+";
        example = "http://localhost:8080/health";
        description = "URL fetched with GET; the check passes when the response status is `expectedStatus`.";
      };
      expectedStatus = mkOption {
        type = types.ints.between 100 599;
        default = 200;
        description = "HTTP status that means healthy.";
      };
      timeout = durationOption 3 "Seconds the request may take.";
      interval = durationOption 5 "Seconds between runs of this check in periodic health reports.";
    };
  };

  commandCheck = types.submodule {
    options = {
      name = mkOption {
        type = types.strMatching ".{1,128}";
        example = "disk-space";
        description = "Name of the check in reports and metrics (unique among all checks).";
      };
      command = mkOption {
        type = types.nonEmptyStr;
        example = "test $(df --output=pcent / | tail -1 | tr -d '% ') -lt 90";
        description = ''
          Shell command run with `/bin/sh -c` as root; exit status 0 means healthy. Tools it
          calls must be on the agent's PATH (see `services.nixfleet-agent.path`).
        '';
      };
      timeout = durationOption 5 "Seconds the command may run before it counts as failed.";
      interval = durationOption 10 "Seconds between runs of this check in periodic health reports.";
    };
  };

  configFile = pkgs.writeText "nixfleet-agent.json" (builtins.toJSON (import ./agent-config.nix cfg));

  # Every name a check reports under must be unique (the agent refuses duplicates).
  checkNames =
    lib.concatMap (c: c.units) cfg.healthChecks.systemd
    ++ map (c: c.url) cfg.healthChecks.http
    ++ map (c: c.name) cfg.healthChecks.command;
  duplicateNames = lib.filter (n: lib.length (lib.filter (m: m == n) checkNames) > 1) (lib.unique checkNames);

  # One URL (as before lists) or several, tried in order by the agent; rendered as given, since
  # the agent accepts both forms.
  controlPlaneUrls =
    if builtins.isList cfg.controlPlaneUrl then cfg.controlPlaneUrl else [ cfg.controlPlaneUrl ];
  isHttp = lib.any (lib.hasPrefix "http://") controlPlaneUrls;
  duplicateUrls = lib.filter (u: lib.length (lib.filter (v: v == u) controlPlaneUrls) > 1) (
    lib.unique controlPlaneUrls
  );
  hasTlsFiles = cfg.tls.caCert != null || cfg.tls.clientCert != null || cfg.tls.clientKey != null;
  stateDir = "/var/lib/nixfleet";
in
{
  options.services.nixfleet-agent = {
    enable = lib.mkEnableOption "the nixfleet deployment agent";

    package = mkOption {
      type = types.package;
      default = pkgs.nixfleet or (pkgs.callPackage ../package.nix { });
      defaultText = lib.literalExpression "pkgs.nixfleet or (pkgs.callPackage \"\${nixfleet}/nix/package.nix\" { })";
      description = "The nixfleet package providing `nixfleet-agent`.";
    };

    controlPlaneUrl = mkOption {
      type = types.either types.str (types.nonEmptyListOf types.str);
      example = [
        "https://cp1.example.com:8443"
        "https://cp2.example.com:8443"
      ];
      description = ''
        Base URL of the control plane, or a list of URLs (control-plane replicas) tried in order:
        the agent stays on the one that answers and moves to the next when it is unreachable or
        answers UNAVAILABLE. A single string is still accepted. One load-balanced name is the
        other way to reach several replicas. Each must be `https://` unless `allowInsecure` is
        set. Required.
      '';
    };

    machineId = mkOption {
      type = machineIdType;
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      description = "This machine's id. With mTLS it must equal the client certificate's CN.";
    };

    tags = mkOption {
      type = types.listOf tagType;
      default = [ ];
      example = [
        "web"
        "prod"
        "eu-west"
      ];
      description = "Tags reported to the control plane on every report; rollouts select machines by tag.";
    };

    pollInterval = durationOption 60 "Seconds between polls of the control plane in steady state.";
    retryInterval = durationOption 30 "Seconds until the next try after a failed cycle (network, fetch, apply, verify).";
    healthInterval = durationOption 60 "Seconds between periodic health reports, independent of deployments.";

    healthChecks = {
      systemd = mkOption {
        type = types.listOf systemdCheck;
        default = [ ];
        example = lib.literalExpression ''[ { units = [ "nginx.service" "postgresql.service" ]; } ]'';
        description = "systemd unit checks. With no checks at all the agent checks `systemctl is-system-running` (running or degraded).";
      };
      http = mkOption {
        type = types.listOf httpCheck;
        default = [ ];
        example = lib.literalExpression ''[ { url = "http://localhost:8080/health"; expectedStatus = 200; timeout = 3; interval = 5; } ]'';
        description = "HTTP checks.";
      };
      command = mkOption {
        type = types.listOf commandCheck;
        default = [ ];
        example = lib.literalExpression ''[ { name = "disk-space"; command = "test $(df --output=pcent / | tail -1 | tr -d '% ') -lt 90"; } ]'';
        description = "Command checks.";
      };
    };

    metricsPort = mkOption {
      type = types.nullOr types.port;
      default = null;
      example = 9101;
      description = "Port of the agent's Prometheus listener; `null` disables it.";
    };

    metricsAddress = mkOption {
      type = types.str;
      default = "0.0.0.0";
      example = "127.0.0.1";
      description = "Address the Prometheus listener binds.";
    };

    metricsOpenFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `metricsPort` in the firewall.";
    };

    dbPath = mkOption {
      type = absolutePath;
      default = "${stateDir}/state.db";
      description = "The agent's SQLite journal (deployments, quarantine, health history).";
    };

    tls = {
      caCert = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/etc/nixfleet/ca.pem";
        description = "PEM CA bundle that signed the control plane's certificate (in addition to the system roots).";
      };
      clientCert = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/var/lib/nixfleet/tls/client.pem";
        description = "PEM client certificate for mTLS (CN = `machineId`). Give `clientKey` too.";
      };
      clientKey = mkOption {
        # A string, not a path: a path literal would copy the private key into the
        # world-readable Nix store.
        type = types.nullOr absolutePath;
        default = null;
        example = "/var/lib/nixfleet/tls/client.key";
        description = ''
          PEM private key of `clientCert`, as a path string outside the Nix store (readable by
          root only). Give `clientCert` too.
        '';
      };
    };

    allowInsecure = mkOption {
      type = types.bool;
      default = false;
      description = "Allow a plain `http://` control plane URL. Development only: no server authentication, no mTLS.";
    };

    cacheUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "https://cache.example.com";
      description = "Binary cache to fetch from when the control plane names none. With neither, the closure must already be in the local store.";
    };

    dryRun = mkOption {
      type = types.bool;
      default = false;
      description = "Check and fetch, never apply.";
    };

    protocol = mkOption {
      type = types.enum [
        "grpc"
        "connect"
        "connect-json"
      ];
      default = "grpc";
      description = ''
        Wire protocol: `grpc` (HTTP/2, push over the bidi Session stream), `connect` (Connect
        binary, HTTP/2, Session), `connect-json` (HTTP/1.1 fallback: unary polling + Watch).
      '';
    };

    verifyTimeout = durationOption 120 "Seconds failing health checks may take to pass after a switch before it is rolled back.";
    activationTimeout = durationOption 600 "Seconds a switch may run; a longer one is a failure and is rolled back.";

    activation = mkOption {
      type = types.enum [
        "systemd-run"
        "direct"
      ];
      default = "systemd-run";
      description = ''
        How the switch runs so that it survives the agent being restarted by it: `systemd-run`
        (a transient unit, the right choice on NixOS) or `direct` (a detached process group).
      '';
    };

    activationOrder = mkOption {
      type = types.enum [
        "confirm"
        "switch"
      ];
      default = "confirm";
      description = ''
        When a new generation becomes the boot default. `confirm` (default): activate it with
        `switch-to-configuration test`, run the health checks, and only then set the system
        profile and run `switch-to-configuration boot` — a power cut, kernel panic or reboot
        during verification boots the previous generation, reported as `ROLLED_BACK_BY_REBOOT`.
        `switch`: set the profile and run `switch-to-configuration switch` first (what
        `nixos-rebuild switch` does) — a reboot during verification boots the unproven generation.
      '';
    };

    fetchTimeout = durationOption 600 "Hard limit for `nix copy` / `nix path-info` of one closure.";
    requestTimeout = durationOption 30 "Limit for one unary call to the control plane.";
    heartbeatInterval = durationOption 30 "Heartbeat period on the Session stream.";

    logLevel = mkOption {
      type = types.enum [
        "fatal"
        "error"
        "warn"
        "info"
        "debug"
        "trace"
        "silent"
      ];
      default = "info";
      description = "Log level of the agent's JSON log lines (journald).";
    };

    path = mkOption {
      type = types.listOf types.package;
      default = [ ];
      example = lib.literalExpression "[ pkgs.curl pkgs.jq ]";
      description = ''
        Extra packages on the agent's PATH, for command health checks. nix, systemd, coreutils,
        util-linux and bash are always there.
      '';
    };

    persistence = {
      enable = mkOption {
        type = types.bool;
        default = options ? environment.persistence;
        defaultText = lib.literalExpression "options ? environment.persistence";
        description = ''
          Persist `/var/lib/nixfleet` (the journal) with impermanence's
          `environment.persistence`. On by default when that option exists.
        '';
      };
      path = mkOption {
        type = types.str;
        default = "/persist";
        example = "/nix/persist";
        description = "The impermanence persistent root that `/var/lib/nixfleet` is stored under.";
      };
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = (cfg.tls.clientCert == null) == (cfg.tls.clientKey == null);
            message = "services.nixfleet-agent: tls.clientCert and tls.clientKey must be set together (both or neither).";
          }
        ]
        ++ map (url: {
          assertion =
            lib.hasPrefix "https://" url || (cfg.allowInsecure && lib.hasPrefix "http://" url);
          message =
            if lib.hasPrefix "http://" url then
              "services.nixfleet-agent: controlPlaneUrl ${url} is plain http://; use https:// or set allowInsecure = true (development only)."
            else
              "services.nixfleet-agent: controlPlaneUrl ${url} must start with https://.";
        }) controlPlaneUrls
        ++ [
          {
            assertion = duplicateUrls == [ ];
            message = "services.nixfleet-agent: controlPlaneUrl lists ${lib.concatStringsSep ", " duplicateUrls} more than once.";
          }
          {
            # The agent refuses this too: certificates configured for a plain-HTTP link would
            # silently not be used.
            assertion = !(isHttp && hasTlsFiles);
            message = "services.nixfleet-agent: tls.* files are set but controlPlaneUrl is http://, so they would not be used; use https://.";
          }
          {
            assertion = !cfg.metricsOpenFirewall || (cfg.metricsPort != null && cfg.metricsPort != 0);
            message = "services.nixfleet-agent: metricsOpenFirewall needs a fixed metricsPort (not null, not 0).";
          }
          {
            assertion = duplicateNames == [ ];
            message = "services.nixfleet-agent: health check names must be unique (systemd units, http URLs, command names); used more than once: ${lib.concatStringsSep ", " duplicateNames}.";
          }
        ];

        warnings = lib.optional (cfg.tls.clientKey != null && lib.hasPrefix "/nix/store/" cfg.tls.clientKey) "services.nixfleet-agent: tls.clientKey ${cfg.tls.clientKey} is in the world-readable Nix store; keep private keys outside it.";

        # The rendered configuration also lives at the agent's default path, so running
        # `nixfleet-agent` by hand (e.g. with --dry-run) sees what the service sees.
        environment.etc."nixfleet/agent.json".source = configFile;

        systemd.services.nixfleet-agent = {
          description = "nixfleet deployment agent";
          wantedBy = [ "multi-user.target" ];
          wants = [ "network-online.target" ];
          after = [
            "network-online.target"
            "nix-daemon.service"
          ];

          # The agent runs nix, nix-env, nix-store, systemd-run, systemctl, flock and /bin/sh.
          # The host's own nix and systemd come first, so the agent uses the same versions as the
          # daemon and PID 1 (the package's wrapper only appends its own as a fallback).
          path = [
            config.nix.package
            config.systemd.package
            pkgs.coreutils
            pkgs.util-linux
            pkgs.bash
          ]
          ++ cfg.path;

          environment = {
            # nix keeps its caches under $XDG_CACHE_HOME; keep them with the agent's state.
            XDG_CACHE_HOME = "${stateDir}/.cache";
            # Memory of a process that idles on every host (docs/agent.md, "Memory and CPU"):
            # glibc's default of 8 malloc arenas per core and V8's 4 platform worker threads are
            # sized for busy servers; the agent allocates little, rarely, from one thread.
            # Defaults only: a host may set either (NODE_OPTIONS=--max-old-space-size=…).
            MALLOC_ARENA_MAX = lib.mkDefault "2";
            NODE_OPTIONS = lib.mkDefault "--v8-pool-size=1";
          };

          # A switch must never kill the agent in the middle of the deployment that started it.
          # switch-to-configuration compares the old and new unit; with reloadIfChanged it
          # *reloads* a changed agent instead of restarting it, i.e. sends SIGHUP (ExecReload
          # below). On SIGHUP the agent parks its deployment where it is (a running switch goes on
          # in its own transient unit) and exits 0; Restart=always starts the new package with the
          # new configuration, whose journal resumes the deployment and finishes it exactly once
          # (test/systemd/health-and-reload.test.ts). restartIfChanged = false is the second line:
          # were reloadIfChanged ever forced off, the switch would leave the agent running
          # (the change then takes effect at the next restart) rather than kill it.
          reloadIfChanged = true;
          restartIfChanged = false;
          # Fixed v0.1 bug: the configuration (health checks included) is a trigger, so
          # editing it always reaches the running agent (through the reload above).
          restartTriggers = [ configFile ];

          # Never give up restarting: a fleet host without its agent is unreachable for deploys.
          startLimitIntervalSec = 0;

          serviceConfig = {
            Type = "simple";
            ExecStart = "${cfg.package}/bin/nixfleet-agent --config ${configFile}";
            ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
            Restart = "always";
            # Configuration errors exit non-zero: back off from 5 s up to 2 min instead of
            # spinning (RestartSteps needs systemd >= 254; older versions ignore it).
            RestartSec = "5s";
            RestartSteps = 10;
            RestartMaxDelaySec = "2min";
            User = "root";
            Group = "root";
            StateDirectory = "nixfleet";
            StateDirectoryMode = "0700";
            # systemd-run mode: the switch lives in its own transient unit, and the agent's
            # children (nix copy, health checks) should die with it — but only after the agent
            # has stopped: "mixed" sends SIGTERM to the agent alone and SIGKILL to what is left.
            # With "control-group" a restart also SIGTERMed the agent's in-flight
            # `systemctl is-active` on the switch unit, which it read as a vanished switch and
            # rolled back (found by test/systemd). direct mode: the switch is a process group
            # inside this unit, and it must outlive an agent restart.
            KillMode = if cfg.activation == "direct" then "process" else "mixed";
            # Deliberately no sandboxing (ProtectSystem, PrivateTmp, NoNewPrivileges, ...).
            # The agent is `nixos-rebuild switch` as a daemon: in `direct` mode
            # switch-to-configuration inherits this unit's restrictions and needs the whole
            # file system, /dev, cgroups, kernel modules and /boot; command health checks may
            # call setuid wrappers (sudo, ping). A root process whose job is replacing the
            # whole system gains nothing from a sandbox it can switch away.
          };
        };

        networking.firewall.allowedTCPPorts = lib.mkIf (cfg.metricsOpenFirewall && cfg.metricsPort != null) [
          cfg.metricsPort
        ];
      }

      # A journal outside what persistence keeps would be wiped at every boot of an impermanent
      # host, and with it the record of what this host runs and what it must never run again.
      {
        assertions = [
          {
            assertion =
              !cfg.persistence.enable
              || lib.hasPrefix "${stateDir}/" cfg.dbPath
              || lib.hasPrefix "${cfg.persistence.path}/" cfg.dbPath;
            message = "services.nixfleet-agent: dbPath ${cfg.dbPath} is outside ${stateDir}, the directory persistence keeps (under ${cfg.persistence.path}); on this impermanent host the journal would be lost at every boot. Put dbPath under ${stateDir} or under ${cfg.persistence.path}, or set persistence.enable = false if you persist it yourself.";
          }
        ];
      }

      # impermanence: declared only on hosts that import it, so the definition must not even
      # exist elsewhere (a false mkIf still names the option), hence optionalAttrs.
      (lib.optionalAttrs (options ? environment.persistence) {
        environment.persistence = lib.mkIf cfg.persistence.enable {
          ${cfg.persistence.path}.directories = [
            {
              directory = stateDir;
              mode = "0700";
            }
          ];
        };
      })
    ]
  );
}
