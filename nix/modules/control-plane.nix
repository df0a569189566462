# services.nixfleet-control-plane: the nixfleet control plane on a NixOS host.
#
# It needs no root powers: it serves TLS on a port, writes one SQLite file (or talks to
# PostgreSQL, `database.*`) and reads its certificates, so the unit runs as a system user inside
# a tight sandbox. The TLS files are handed
# over with systemd credentials (LoadCredential), so the private key can stay root-only (0400)
# wherever it lives.
{
  config,
  lib,
  options,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.services.nixfleet-control-plane;

  user = "nixfleet-cp";
  stateDir = "/var/lib/nixfleet-cp";

  hostPort = types.strMatching "([[][0-9A-Fa-f:.]+[]]|[A-Za-z0-9._-]+):[0-9]{1,5}" // {
    description = "HOST:PORT (IPv6 hosts in brackets, e.g. [::]:8443)";
  };
  absolutePath = types.strMatching "/.*" // {
    description = "absolute path (a string)";
  };
  # The ranges src/control-plane/config.ts accepts, so a bad value fails at evaluation.
  secondsUpTo =
    max:
    types.ints.between 1 max
    // {
      description = "integer between 1 and ${toString max}";
    };

  # The port of a HOST:PORT string: everything after the last colon.
  portOf = listen: lib.toInt (lib.last (builtins.match "(.*):([0-9]+)" listen));
  listenPort = portOf cfg.listen;
  metricsPort = if cfg.metrics.listen == null then null else portOf cfg.metrics.listen;
  privilegedPort = listenPort < 1024 || (metricsPort != null && metricsPort < 1024);

  # systemd's ExecStart is not a shell: quote every argument as a C string and escape the
  # specifier (%) and variable ($) characters, as nixpkgs' utils.escapeSystemdExecArg does.
  execArg = arg: builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString arg));
  execArgs = args: lib.concatStringsSep " " (map execArg args);

  # PostgreSQL on this host, reached over its Unix socket with peer authentication: the service
  # user `nixfleet-cp` is the database role of the same name, so no password exists anywhere.
  localDatabaseUrl = "postgresql:///${user}?host=/run/postgresql&user=${user}";
  databaseUrl = if cfg.database.createLocally then localDatabaseUrl else cfg.database.url;
  # PostgreSQL instead of the SQLite file: a URL here or in database.environmentFile.
  usesPostgres = databaseUrl != null || cfg.database.environmentFile != null;
  # `postgres://user:password@…`: a password in the world-readable store.
  urlHasPassword = databaseUrl != null && builtins.match "[a-z]+://[^/@:]*:[^/@]*@.*" databaseUrl != null;

  tlsEnabled = !cfg.allowInsecure;
  # The files arrive in $CREDENTIALS_DIRECTORY (%d), readable by the service user only.
  credentials = lib.optionals tlsEnabled [
    "tls-cert:${toString cfg.tls.cert}"
    "tls-key:${cfg.tls.key}"
    "client-ca:${toString cfg.tls.clientCa}"
  ];

  serveFlags =
    [
      "--listen"
      cfg.listen
    ]
    # The control plane refuses --db-path together with a database URL (one of them would be
    # ignored), so the SQLite path is passed only when SQLite is the store.
    ++ lib.optionals (!usesPostgres) [
      "--db-path"
      cfg.dbPath
    ]
    ++ [
      "--stale-after"
      cfg.staleAfter
      "--poll-hint"
      cfg.pollHint
      "--executor-tick"
      cfg.executorTick
      "--executor-lease"
      cfg.executorLease
      "--heartbeat-interval"
      cfg.heartbeatInterval
      "--report-retention"
      cfg.reportRetention
      "--log-level"
      cfg.logLevel
    ]
    ++ lib.optionals (tlsEnabled && cfg.tls.ticketKeys != null) [
      "--tls-ticket-keys"
      cfg.tls.ticketKeys
    ]
    ++ lib.optional cfg.allowInsecure "--allow-insecure"
    ++ lib.optionals (cfg.metrics.listen != null) [
      "--metrics-listen"
      cfg.metrics.listen
    ]
    ++ lib.optional cfg.metrics.requireKey "--metrics-require-key"
    ++ cfg.extraFlags;

  execStart =
    execArgs ([ "${cfg.package}/bin/nixfleet-control-plane" "serve" ] ++ serveFlags)
    # %d is a systemd specifier and must stay unescaped.
    + lib.optionalString tlsEnabled " --tls-cert %d/tls-cert --tls-key %d/tls-key --client-ca %d/client-ca";

  # `nixfleet-control-plane keys …` against this host's database (NIXFLEET_CP_DB_PATH), as the
  # service user in the service's state directory (created if the service never ran), so the
  # SQLite files keep the owner the service needs. `keys create` prints the secret on stdout.
  adminTool = pkgs.writeShellScriptBin "nixfleet-control-plane-admin" ''
    if [ "$(${pkgs.coreutils}/bin/id -u)" != 0 ]; then
      echo "nixfleet-control-plane-admin: run as root (it runs the command as ${user})" >&2
      exit 1
    fi
    exec ${config.systemd.package}/bin/systemd-run --quiet --pipe --wait --collect \
      --property=User=${user} --property=Group=${user} \
      --property=StateDirectory=nixfleet-cp --property=StateDirectoryMode=0700 \
      --property=UMask=0077 \
      ${
        if usesPostgres then
          lib.optionalString (databaseUrl != null) "--setenv=NIXFLEET_CP_DATABASE_URL=${lib.escapeShellArg databaseUrl} "
          + lib.optionalString (
            cfg.database.environmentFile != null
          ) "--property=EnvironmentFile=${lib.escapeShellArg cfg.database.environmentFile} "
        else
          "--setenv=NIXFLEET_CP_DB_PATH=${lib.escapeShellArg cfg.dbPath} "
      }\
      -- ${cfg.package}/bin/nixfleet-control-plane "$@"
  '';
in
{
  options.services.nixfleet-control-plane = {
    enable = lib.mkEnableOption "the nixfleet control plane";

    package = mkOption {
      type = types.package;
      default = pkgs.nixfleet or (pkgs.callPackage ../package.nix { });
      defaultText = lib.literalExpression "pkgs.nixfleet or (pkgs.callPackage \"\${nixfleet}/nix/package.nix\" { })";
      description = "The nixfleet package providing `nixfleet-control-plane`.";
    };

    listen = mkOption {
      type = hostPort;
      default = "0.0.0.0:8443";
      example = "[::]:8443";
      description = "Address and port of the TLS listener (gRPC, Connect, REST, /healthz, /readyz, /metrics).";
    };

    dbPath = mkOption {
      type = absolutePath;
      default = "${stateDir}/state.db";
      description = "The SQLite database (WAL mode; back up the -wal file with it, or use `sqlite3 .backup`). Not used with `database.*`.";
    };

    database = {
      url = mkOption {
        type = types.nullOr (types.strMatching "postgres(ql)?://.*");
        default = null;
        example = "postgresql://nixfleet@db.internal:5432/nixfleet?sslmode=verify-full";
        description = ''
          PostgreSQL instead of the SQLite file at `dbPath`: passed as `--database-url`. Several
          control-plane replicas may share one database. The URL lands in the world-readable
          Nix store: put a password in `database.environmentFile` instead (or use a password
          file, client certificates or peer authentication). Unset: SQLite.
        '';
      };
      environmentFile = mkOption {
        type = types.nullOr absolutePath;
        default = null;
        example = "/run/secrets/nixfleet-cp-database.env";
        description = ''
          A file, outside the Nix store, holding `NIXFLEET_CP_DATABASE_URL=postgres://…` with
          its password; read by systemd as the unit's `EnvironmentFile` (it may be root-only).
          Use it instead of `database.url`, not with it.
        '';
      };
      createLocally = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Run PostgreSQL on this host (`services.postgresql`) with a database and role
          `nixfleet-cp` owned by the service user, reached over the Unix socket with peer
          authentication (no password). For one host that wants PostgreSQL; replicas on
          several hosts need a shared server instead (`database.url`).
        '';
      };
    };

    persistence = {
      enable = mkOption {
        type = types.bool;
        default = options ? environment.persistence;
        defaultText = lib.literalExpression "options ? environment.persistence";
        description = ''
          Persist `/var/lib/nixfleet-cp` (the database: machines, releases, rollouts, audit log,
          key hashes) with impermanence's `environment.persistence`, owned by `nixfleet-cp`.
          On by default when that option exists.
        '';
      };
      path = mkOption {
        type = types.str;
        default = "/persist";
        example = "/nix/persist";
        description = "The impermanence persistent root that `/var/lib/nixfleet-cp` is stored under.";
      };
    };

    tls = {
      cert = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/var/lib/secrets/nixfleet/server.pem";
        description = "PEM server certificate (chain). Required unless `allowInsecure`.";
      };
      key = mkOption {
        # A string, not a path: a path literal would copy the private key into the store.
        type = types.nullOr absolutePath;
        default = null;
        example = "/var/lib/secrets/nixfleet/server.key";
        description = "PEM private key of `tls.cert`, outside the Nix store; may be root-only (it is passed as a systemd credential). Required unless `allowInsecure`.";
      };
      clientCa = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/var/lib/secrets/nixfleet/agents-ca.pem";
        description = "PEM CA that signs the agents' client certificates (CN = machine id). Required unless `allowInsecure`.";
      };
      ticketKeys = mkOption {
        # A string, not a path: the key must not be copied into the world-readable store.
        type = types.nullOr absolutePath;
        default = null;
        example = "/var/lib/secrets/nixfleet/tls-ticket-keys";
        description = "TLS session-ticket key: 48 random bytes (`head -c 48 /dev/urandom`), readable by the service user only, the same file on every replica so agents resume their TLS session on any of them after a restart. Re-read every minute (replace it to rotate). Default (null): `tls-ticket-keys` in the state directory, created on first start.";
      };
    };

    allowInsecure = mkOption {
      type = types.bool;
      default = false;
      description = "Serve plain HTTP (h2c and HTTP/1.1) without TLS; agent identities are then taken on trust. Development only.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the port of `listen` in the firewall.";
    };

    metrics = {
      listen = mkOption {
        type = types.nullOr hostPort;
        default = null;
        example = "127.0.0.1:9102";
        description = "Extra plain-HTTP listener serving only /metrics (it is always on the main listener too).";
      };
      requireKey = mkOption {
        type = types.bool;
        default = false;
        description = "Require an API key (any role) for /metrics.";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open the port of `metrics.listen` in the firewall.";
      };
    };

    staleAfter = mkOption {
      type = secondsUpTo (30 * 86400);
      default = 300;
      description = "Seconds without a report after which a machine shows as stale.";
    };

    pollHint = mkOption {
      type = secondsUpTo 3600;
      default = 5;
      description = "Poll interval (seconds) suggested to machines in an active rollout.";
    };

    executorTick = mkOption {
      type = types.addCheck types.number (x: x >= 5.0e-2 && x <= 600) // {
        description = "number of seconds from 0.05 to 600";
      };
      default = 2;
      description = "Seconds between rollout executor ticks (timeouts; reports are acted on at once).";
    };

    executorLease = mkOption {
      type = types.addCheck types.number (x: x >= 0.3 && x <= 600) // {
        description = "number of seconds from 0.3 to 600";
      };
      default = 6;
      description = ''
        With PostgreSQL (`database.*`): seconds an executor leader's lease lasts without renewal;
        every replica claims it every third of this. A killed leader is replaced within about
        1⅓ × this; a leader that cannot renew it for this long (database failover, a long pause)
        stops executing. Use the same value on every replica. Unused with SQLite (one process).
      '';
    };

    heartbeatInterval = mkOption {
      type = secondsUpTo 3600;
      default = 15;
      description = "Heartbeat period (seconds) on agents' Session/Watch streams.";
    };

    reportRetention = mkOption {
      type = secondsUpTo (24 * 3650);
      default = 168;
      description = "Hours reports and health reports are kept before they are pruned.";
    };

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
      description = "Log level of the JSON log lines (journald).";
    };

    extraFlags = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--log-level"
        "debug"
      ];
      description = "Extra arguments appended to `nixfleet-control-plane serve`.";
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      assertions = [
        {
          # Persistence keeps the state directory only; a database elsewhere on an impermanent
          # root would be wiped at every boot, taking the fleet's whole state with it.
          assertion =
            !cfg.persistence.enable
            || usesPostgres
            || lib.hasPrefix "${stateDir}/" cfg.dbPath
            || lib.hasPrefix "${cfg.persistence.path}/" cfg.dbPath;
          message = "services.nixfleet-control-plane: dbPath ${cfg.dbPath} is outside ${stateDir}, the directory persistence keeps (under ${cfg.persistence.path}); on this impermanent host it would be lost at every boot. Put dbPath under ${stateDir} or under ${cfg.persistence.path}, or set persistence.enable = false if you persist it yourself.";
        }
        {
          assertion = !cfg.database.createLocally || (cfg.database.url == null && cfg.database.environmentFile == null);
          message = "services.nixfleet-control-plane: database.createLocally provides the database URL itself; unset database.url and database.environmentFile, or turn createLocally off to use another server.";
        }
        {
          assertion = cfg.database.url == null || cfg.database.environmentFile == null;
          message = "services.nixfleet-control-plane: database.url and database.environmentFile are both set; give the URL once (the environment file when it holds a password).";
        }
        {
          assertion = cfg.allowInsecure || (cfg.tls.cert != null && cfg.tls.key != null && cfg.tls.clientCa != null);
          message = "services.nixfleet-control-plane: set tls.cert, tls.key and tls.clientCa (or allowInsecure = true for development).";
        }
        {
          assertion = !cfg.metrics.openFirewall || cfg.metrics.listen != null;
          message = "services.nixfleet-control-plane: metrics.openFirewall needs metrics.listen.";
        }
        {
          assertion = listenPort <= 65535 && (metricsPort == null || metricsPort <= 65535);
          message = "services.nixfleet-control-plane: listen/metrics.listen port must be at most 65535.";
        }
      ];

      warnings =
        lib.optional (cfg.tls.key != null && lib.hasPrefix "/nix/store/" cfg.tls.key) "services.nixfleet-control-plane: tls.key ${cfg.tls.key} is in the world-readable Nix store; keep private keys outside it."
        ++ lib.optional urlHasPassword "services.nixfleet-control-plane: database.url holds a password, which ends up in the world-readable Nix store; put NIXFLEET_CP_DATABASE_URL in database.environmentFile instead.";

      users.users.${user} = {
        isSystemUser = true;
        group = user;
        description = "nixfleet control plane";
        home = stateDir;
      };
      users.groups.${user} = { };

      environment.systemPackages = [ adminTool ];

      systemd.services.nixfleet-control-plane = {
        description = "nixfleet control plane";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ] ++ lib.optional cfg.database.createLocally "postgresql.service";
        requires = lib.optional cfg.database.createLocally "postgresql.service";
        environment = {
          # Every TLS connection keeps a 64 KiB read buffer (Node's TLSWrap asks for what libuv
          # suggests). From glibc's heap it lands on pages dirtied by earlier work and stays
          # resident whole; as its own mapping only the pages a read touches count. With 10,000
          # agents: ≈ 25 KB less RSS per connection (docs/control-plane.md, "Memory at scale").
          # One mapping per connection: far beyond 50,000 connections raise vm.max_map_count.
          MALLOC_MMAP_THRESHOLD_ = lib.mkDefault "65536";
        }
        // lib.optionalAttrs (databaseUrl != null) { NIXFLEET_CP_DATABASE_URL = databaseUrl; };

        serviceConfig = {
          Type = "simple";
          ExecStart = execStart;
          Restart = "always";
          RestartSec = "5s";
          # It stops accepting, ends streams and closes the database on SIGTERM.
          TimeoutStopSec = "30s";
          User = user;
          Group = user;
          StateDirectory = "nixfleet-cp";
          StateDirectoryMode = "0700";
          UMask = "0077";
          LoadCredential = credentials;
          EnvironmentFile = lib.optional (cfg.database.environmentFile != null) cfg.database.environmentFile;
          ReadWritePaths = lib.optional (!usesPostgres && !lib.hasPrefix "${stateDir}/" cfg.dbPath) (
            dirOf cfg.dbPath
          );

          # Hardening: nothing here needs more than a socket, its state directory and the
          # credentials. MemoryDenyWriteExecute stays off because V8's JIT needs W+X memory.
          AmbientCapabilities = lib.optional privilegedPort "CAP_NET_BIND_SERVICE";
          CapabilityBoundingSet = if privilegedPort then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          ProtectProc = "invisible";
          RestrictAddressFamilies = [
            "AF_INET"
            "AF_INET6"
            "AF_UNIX"
          ];
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          LockPersonality = true;
          RemoveIPC = true;
          SystemCallArchitectures = "native";
          SystemCallFilter = [
            "@system-service"
            "~@privileged"
          ];
          SystemCallErrorNumber = "EPERM";
        };
      };

      services.postgresql = lib.mkIf cfg.database.createLocally {
        enable = true;
        ensureDatabases = [ user ];
        ensureUsers = [
          {
            name = user;
            ensureDBOwnership = true;
          }
        ];
      };

      networking.firewall.allowedTCPPorts =
        lib.optional cfg.openFirewall listenPort
        ++ lib.optional (cfg.metrics.openFirewall && metricsPort != null) metricsPort;
    }

    # impermanence: declared only on hosts that import it, so the definition must not even
    # exist elsewhere (a false mkIf still names the option), hence optionalAttrs.
    (lib.optionalAttrs (options ? environment.persistence) {
      environment.persistence = lib.mkIf cfg.persistence.enable {
        ${cfg.persistence.path}.directories = [
          {
            directory = stateDir;
            inherit user;
            group = user;
            mode = "0700";
          }
        ]
        # The local PostgreSQL's data (the fleet's whole state) must outlive a reboot too.
        ++ lib.optional cfg.database.createLocally {
          directory = "/var/lib/postgresql";
          user = "postgres";
          group = "postgres";
          mode = "0750";
        };
      };
    })
  ]);
}
