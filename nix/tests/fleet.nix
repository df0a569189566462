# A control plane and two agents, with real mTLS, real switches and real rollbacks:
#
#   1. both agents register with their tags;
#   2. a canary rollout of a good generation to `web` completes, both hosts switch to it;
#   3. a canary rollout of a generation whose health check fails: the canary switches, fails
#      its check, rolls back to exactly the previous generation through that generation's own
#      switch-to-configuration, and the rollout pauses with the other host untouched.
#
# The generations are specialisations of each agent's own system: complete NixOS systems that
# are part of the booted closure (so they are valid in the VM's store and need no binary
# cache), differing only in a marker file in /etc — which the command health check reads.
{
  pkgs,
  nixfleetModules,
  nixfleetPackage,
}:
let
  inherit (pkgs) lib;

  # Test PKI, built at evaluation time. Private keys in the store are fine for a throwaway VM
  # test (the modules warn about them, and that warning is expected here).
  certs = pkgs.runCommand "nixfleet-test-pki" { nativeBuildInputs = [ pkgs.openssl ]; } ''
    mkdir -p $out && cd $out
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key
    openssl req -x509 -new -key ca.key -subj "/CN=nixfleet test CA" -days 3650 -out ca.pem
    issue() {
      openssl ecparam -name prime256v1 -genkey -noout -out "$1.key"
      openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr"
      printf "$2" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.pem"
    }
    issue cp 'subjectAltName=DNS:cp\nextendedKeyUsage=serverAuth\n'
    issue web-01 'extendedKeyUsage=clientAuth\n'
    issue web-02 'extendedKeyUsage=clientAuth\n'
  '';

  agentNode =
    machineId:
    { ... }:
    {
      imports = [ nixfleetModules.agent ];
      services.nixfleet-agent = {
        enable = true;
        package = nixfleetPackage;
        controlPlaneUrl = "https://cp:8443";
        inherit machineId;
        tags = [
          "web"
          "eu-west"
        ];
        pollInterval = 2;
        retryInterval = 2;
        healthInterval = 2;
        verifyTimeout = 15;
        tls = {
          caCert = "${certs}/ca.pem";
          clientCert = "${certs}/${machineId}.pem";
          clientKey = "${certs}/${machineId}.key";
        };
        healthChecks.command = [
          {
            name = "not-broken";
            command = "test ! -e /etc/nixfleet-test/broken";
            interval = 2;
          }
        ];
        healthChecks.systemd = [ { units = [ "nixfleet-agent.service" ]; } ];
      };
      # The two generations a rollout can ship, besides the booted one.
      specialisation.good.configuration = {
        environment.etc."nixfleet-test/generation".text = "good";
      };
      specialisation.broken.configuration = {
        environment.etc."nixfleet-test/broken".text = "this generation fails its health check";
      };
      virtualisation.memorySize = 1024;
    };
in
pkgs.testers.runNixOSTest {
  name = "nixfleet-fleet";

  nodes = {
    cp =
      { ... }:
      {
        imports = [ nixfleetModules.control-plane ];
        services.nixfleet-control-plane = {
          enable = true;
          package = nixfleetPackage;
          listen = "0.0.0.0:8443";
          openFirewall = true;
          pollHint = 2;
          executorTick = 1;
          tls = {
            cert = "${certs}/cp.pem";
            key = "${certs}/cp.key";
            clientCa = "${certs}/ca.pem";
          };
        };
        environment.systemPackages = [
          nixfleetPackage
          pkgs.jq
        ];
        virtualisation.memorySize = 1024;
      };
    web01 = agentNode "web-01";
    web02 = agentNode "web-02";
  };

  testScript = ''
    import json

    machine_ids = {"web01": "web-01", "web02": "web-02"}

    def fleet(args):
        out = cp.succeed(
            f"nixfleet --control-plane-url https://cp:8443 --ca-cert ${certs}/ca.pem "
            f"--api-key {api_key} --json {args}"
        )
        return json.loads(out)

    def current(node):
        return node.succeed("readlink -f /run/current-system").strip()

    def specialisation(node, name):
        return node.succeed(f"readlink -f /run/current-system/specialisation/{name}").strip()

    def wait_for_rollout(rollout_id, status, timeout=300):
        def reached(_):
            r = fleet(f"rollout status {rollout_id}")["rollout"]
            reason = r.get("statusReason", "")
            print(f"rollout {rollout_id}: {r.get('status')} {reason}")
            return r.get("status") == status
        retry(reached, timeout)

    start_all()
    cp.wait_for_unit("nixfleet-control-plane.service")
    cp.wait_for_open_port(8443)
    web01.wait_for_unit("nixfleet-agent.service")
    web02.wait_for_unit("nixfleet-agent.service")

    # The first admin key, made on the control-plane host against its database.
    api_key = cp.succeed(
        "nixfleet-control-plane-admin keys create --name vm-test --role admin"
    ).strip()
    assert api_key.startswith("nfk-"), api_key

    with subtest("agents register with their tags"):
        def registered(_):
            machines = fleet("machines list --tags web")["machines"]
            return sorted(m["machineId"] for m in machines) == ["web-01", "web-02"]
        retry(registered, 120)
        for m in fleet("machines list --tags web,eu-west")["machines"]:
            assert m["tags"] == ["eu-west", "web"], m
            assert m["lifecycle"] == "MACHINE_LIFECYCLE_ACTIVE", m

    booted = {n.name: current(n) for n in (web01, web02)}
    good = {n.name: specialisation(n, "good") for n in (web01, web02)}
    broken = {n.name: specialisation(n, "broken") for n in (web01, web02)}

    with subtest("a canary rollout of a good generation completes"):
        release = fleet(
            f"release create --entry web-01={good['web01']} --entry web-02={good['web02']}"
        )["release"]["id"]
        rollout = fleet(
            f"rollout start --release {release} --tags web --strategy canary --health-timeout 300"
        )["rollout"]["id"]
        wait_for_rollout(rollout, "ROLLOUT_STATUS_COMPLETED")
        for n in (web01, web02):
            assert current(n) == good[n.name], (n.name, current(n))
            n.succeed("test \"$(cat /etc/nixfleet-test/generation)\" = good")
            # The profile was set before the switch, so a reboot keeps the new generation.
            n.succeed(
                f"test \"$(readlink -f /nix/var/nix/profiles/system)\" = {good[n.name]}"
            )
            # The agent was not restarted by the switch (its unit did not change).
            n.succeed("systemctl is-active nixfleet-agent.service")

    with subtest("a failing health check rolls the canary back and pauses the rollout"):
        release = fleet(
            f"release create --entry web-01={broken['web01']} --entry web-02={broken['web02']}"
        )["release"]["id"]
        rollout = fleet(
            f"rollout start --release {release} --tags web --strategy canary --health-timeout 300"
        )["rollout"]["id"]
        wait_for_rollout(rollout, "ROLLOUT_STATUS_PAUSED")
        # Both hosts run the good generation: the canary went to `broken` and came back to
        # exactly its previous store path, the other host was never touched.
        for n in (web01, web02):
            assert current(n) == good[n.name], (n.name, current(n))
            n.fail("test -e /etc/nixfleet-test/broken")
        outcomes = {
            m["machineId"]: m.get("lastOutcome")
            for m in fleet("machines list --tags web")["machines"]
        }
        print(f"outcomes after the failed canary: {outcomes}")
        failed = ("OUTCOME_ROLLED_BACK", "OUTCOME_QUARANTINED")
        canaries = [n for n in (web01, web02) if outcomes.get(machine_ids[n.name]) in failed]
        assert len(canaries) == 1, outcomes
        canary = canaries[0]
        # The rollback ran the previous generation's own switch script and the failed path
        # stays quarantined: the next polls do not re-apply it.
        canary.sleep(10)
        assert current(canary) == good[canary.name]
  '';
}
