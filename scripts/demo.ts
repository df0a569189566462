/**
 * `npm run demo`: a local fleet on this machine, in about a minute.
 *
 * Starts a control plane on embedded SQLite, builds two system generations for three sandboxed
 * hosts with real Nix, serves them from a signed binary cache, starts three real agents, runs a
 * canary rollout to completion, then a rollout whose health check fails on the canary — which
 * rolls back on its own and pauses the rollout — and prints `nixfleet status`. Everything the
 * demo does to the fleet goes through the real `nixfleet` CLI, printed as it runs.
 *
 * Flags: --keep (leave the fleet running and print how to talk to it), --no-install (never
 * install Nix or openssl), --dir DIR (work there instead of a temp dir).
 */
import { execFileSync, spawn } from "node:child_process";
import { createWriteStream, mkdirSync } from "node:fs";
import { join } from "node:path";
import { Fleet, waitFor } from "../test/fixtures/fleet.js";
import { programArgs } from "../test/fixtures/programs.js";
import { makeTempDir, removeTempDir } from "../test/fixtures/tmp.js";
import { aptInstall, canInstall, installAdvice, missingPackages } from "./system-packages.js";

/** From the one list in scripts/system-packages.ts. */
const DEMO_PACKAGES = ["nix-bin", "openssl"];

const args = new Set(process.argv.slice(2));
const KEEP = args.has("--keep");
const NO_INSTALL = args.has("--no-install");
const dirFlag = process.argv.indexOf("--dir");
const tty = process.stdout.isTTY;
const bold = (s: string) => (tty ? `\x1b[1m${s}\x1b[0m` : s);
const dim = (s: string) => (tty ? `\x1b[2m${s}\x1b[0m` : s);

let step = 0;
const STEPS = 7;
function section(title: string): void {
  step += 1;
  process.stdout.write(`\n${bold(`[${step}/${STEPS}] ${title}`)}\n`);
}

function note(text: string): void {
  process.stdout.write(`${dim(text)}\n`);
}

/**
 * Makes sure the tools the demo drives are here: Nix (the agents fetch and switch real store
 * paths) and openssl (the demo's throwaway CA and certificates). On Debian as root, missing ones
 * are installed from Debian's packages (unless --no-install); elsewhere it says how.
 */
function ensureTools(): string {
  let missing = missingPackages(DEMO_PACKAGES);
  if (missing.length > 0) {
    if (NO_INSTALL || !canInstall()) {
      process.stderr.write(
        [
          "error: the demo needs these, and they are missing:",
          ...installAdvice(missing),
          ...(missing.some((p) => p.pkg === "nix-bin")
            ? ["Nix anywhere else: https://nixos.org/download (the multi-user installer)"]
            : []),
          "then run `npm run demo` again",
          "",
        ].join("\n"),
      );
      process.exit(1);
    }
    aptInstall(missing, note);
    missing = missingPackages(DEMO_PACKAGES);
    if (missing.length > 0)
      throw new Error(`still missing after apt-get: ${missing.map((p) => p.pkg).join(" ")}`);
  }
  return execFileSync("nix", ["--version"], { encoding: "utf8" }).trim();
}

function agentLogsLine(dir: string): string {
  return `agent logs: ${join(dir, "logs")}/<host>.agent.log (JSON lines); while the fleet runs, ${join(dir, "hosts")}/<host>/ has its switch.log and agent.json (config)`;
}

async function main(): Promise<number> {
  process.stdout.write(
    `${bold("nixfleet demo")} — a control plane and three agents on real Nix, on this machine\n`,
  );
  section("checking for Nix and openssl");
  const nixVersion = ensureTools();
  note(nixVersion);
  // Debian's Nix: no substituter round trips to cache.nixos.org, no build sandbox, no build users
  // (there is no `nixbld` group without nix-setup-systemd), `nix` commands.
  process.env["NIX_CONFIG"] =
    "substituters =\nsandbox = false\nbuild-users-group =\nexperimental-features = nix-command";

  const dir = dirFlag > 0 ? process.argv[dirFlag + 1]! : makeTempDir("nixfleet-demo-");
  mkdirSync(dir, { recursive: true });
  section("starting the control plane and building two system generations for three hosts");
  const started = Date.now();
  const fleet = await Fleet.create({
    dir,
    hosts: [
      { name: "web-01", tags: ["web", "demo"] },
      { name: "web-02", tags: ["web", "demo"] },
      { name: "web-03", tags: ["web", "demo"] },
    ],
    // v2: a good new generation. v3: a generation whose health check fails after the switch.
    systems: [{ label: "v2" }, { label: "v3", healthy: false }],
    controlPlaneArgs: ["--dashboard-listen", "127.0.0.1:0"],
  });
  let exitCode = 0;
  try {
    note(`control plane: ${fleet.cp.url} (TLS with a client CA; SQLite at ${join(dir, "cp", "state.db")})`);
    note(
      `binary cache:  ${fleet.cacheUrl} (signed; each host's closures were pushed there and removed locally)`,
    );
    note(
      "each host is a sandbox under " +
        join(dir, "hosts") +
        " with its own /run/current-system and system profile",
    );

    const env = {
      ...process.env,
      NIXFLEET_CONTROL_PLANE_URL: fleet.cp.url,
      NIXFLEET_CA_CERT: fleet.pki.ca,
      NIXFLEET_API_KEY: fleet.adminKey,
    };
    /** Runs the real CLI with the terminal attached, so --wait shows its live progress. */
    const nixfleet = (argv: string[]): Promise<number> => {
      process.stdout.write(`\n${bold(`$ nixfleet ${argv.join(" ")}`)}\n`);
      return new Promise((resolve) => {
        const child = spawn(process.execPath, [...programArgs("cli"), ...argv], { stdio: "inherit", env });
        child.on("exit", (code) => resolve(code ?? 1));
      });
    };

    section("starting three agents; they register themselves over mTLS");
    fleet.startAgents();
    // Each agent's JSON log goes to disk too, so what the demo points at is there to read: during
    // --keep, and after the demo with --dir (host directories are removed with the fleet; logs/ stays).
    mkdirSync(join(dir, "logs"), { recursive: true });
    for (const h of fleet.hosts.values()) {
      const log = createWriteStream(join(dir, "logs", `${h.name}.agent.log`));
      h.agent!.proc.stdout!.pipe(log);
      h.agent!.proc.stderr!.pipe(log);
    }
    await waitFor(
      "all three agents to register",
      async () => (await fleet.status()).machines.filter((m) => m.connected).length === 3,
      60_000,
    );
    await nixfleet(["machines", "list"]);

    section("canary rollout of v2: one host first, then the rest once it proves healthy");
    const v2 = await fleet.release("v2");
    await nixfleet(["rollout", "start", "--release", v2, "--tags", "web", "--strategy", "canary", "--wait"]);

    section("rollout of v3, whose health check fails after the switch");
    const v3 = await fleet.release("v3");
    const code = await nixfleet([
      "rollout",
      "start",
      "--release",
      v3,
      "--tags",
      "web",
      "--strategy",
      "canary",
      "--health-timeout",
      "60",
      "--wait",
    ]);
    note(
      `(exit code ${code}: a paused rollout is a failure for scripts, with the next commands printed above)`,
    );
    // The failing health report pauses the rollout while the canary is still rolling back.
    const canaryAgent = fleet.host("web-01").agent!;
    await canaryAgent.waitForLog(
      (l) => l["event"] === "deployment_finished" && l["outcome"] === "ROLLED_BACK",
      60_000,
    );
    process.stdout.write(`\n${bold("web-01's agent, in its own words (its JSON log, abridged):")}\n`);
    const v3Path = fleet.host("web-01").systems["v3"]!.path;
    for (const l of canaryAgent.lines) {
      if (l["desired"] !== v3Path) continue;
      const at = String(l["time"]).slice(11, 23);
      const took = `(${String(l["durationMs"])} ms)`;
      if (l["event"] === "phase") {
        process.stdout.write(
          `  ${at}  ${String(l["from"] ?? "start").padEnd(12)} → ${String(l["phase"]).padEnd(12)} ${took}\n`,
        );
      } else if (l["event"] === "deployment_finished") {
        process.stdout.write(
          `  ${at}  ${String(l["from"]).padEnd(12)} → ${String(l["outcome"])}: ${String(l["error"] ?? l["message"])}\n`,
        );
      }
    }

    section("the fleet now");
    await nixfleet(["status"]);
    const status = await fleet.status();
    const canary =
      status.machines.find((m) => m.lastMessage && /roll/i.test(m.lastMessage)) ?? status.machines[0]!;
    const onV2 = status.machines.filter(
      (m) => m.currentGeneration === fleet.host(m.machineId).systems["v2"]!.path,
    ).length;
    const seconds = Math.round((Date.now() - started) / 1000);

    section("what happened");
    process.stdout.write(
      `In ${seconds}s, a control plane and three agents on real Nix shipped v2 to the fleet as a canary rollout: ` +
        `one host switched and proved healthy, then the other two followed, each fetching its closure from a signed ` +
        `binary cache and switching through its own switch-to-configuration. Then v3, whose health check fails, ` +
        `went out the same way: the canary (${canary.machineId}) switched, failed its health check, and rolled itself ` +
        `back to exactly v2 with v2's own switch script — no SSH, no operator — and quarantined v3; the control plane ` +
        `saw the failure and paused the rollout before any other host was touched. ${onV2} of 3 hosts run v2 now.\n`,
    );

    if (KEEP) {
      const cp = fleet.cp.url;
      process.stdout.write(
        [
          "",
          bold("The fleet keeps running (Ctrl-C stops it and cleans up). Talk to it:"),
          "",
          `  export NIXFLEET_CONTROL_PLANE_URL=${cp} NIXFLEET_CA_CERT=${fleet.pki.ca} NIXFLEET_API_KEY=${fleet.adminKey}`,
          "  node --import tsx src/cli/main.ts status            # or `nixfleet status` when installed",
          "",
          `  curl --cacert ${fleet.pki.ca} -H "authorization: Bearer ${fleet.adminKey}" \\`,
          `       -H 'content-type: application/json' -d '{}' ${cp}/nixfleet.v1.FleetService/GetFleetStatus`,
          "",
          `  npx buf curl --cacert ${fleet.pki.ca} --list-methods ${cp}`,
          `  grpcurl -cacert ${fleet.pki.ca} -H "authorization: Bearer ${fleet.adminKey}" ${cp.replace("https://", "")} nixfleet.v1.FleetService/GetFleetStatus`,
          "",
          `  ${agentLogsLine(dir)}; workdir ${dir}`,
          "",
          bold("Or look at it in a browser:"),
          `  dashboard: ${String(fleet.cp.lines.find((l) => l.msg === "listening")?.["dashboardUrl"] ?? "")}/`,
          `  sign in with the API key ${fleet.adminKey}`,
          `  (the demo's certificate comes from its own CA, ${fleet.pki.ca}: accept the browser's warning or trust that CA)`,
          "",
        ].join("\n"),
      );
      await new Promise<void>((resolve) => {
        process.once("SIGINT", resolve);
        process.once("SIGTERM", resolve);
      });
    }
    if (!KEEP && dirFlag > 0) note(agentLogsLine(dir));
    exitCode = onV2 === 3 ? 0 : 1;
    if (exitCode !== 0)
      process.stderr.write(`demo: expected all three hosts on v2 at the end, found ${onV2}\n`);
  } catch (err) {
    process.stderr.write(`demo failed: ${(err as Error).message}\n`);
    for (const h of fleet.hosts.values())
      process.stderr.write(`--- ${h.name} agent log tail:\n${h.agent?.tail(15) ?? "(not started)"}\n`);
    process.stderr.write(`--- control plane log tail:\n${fleet.cp.tail(20)}\n`);
    exitCode = 1;
  } finally {
    await fleet.close();
    if (dirFlag < 0) removeTempDir(dir);
  }
  return exitCode;
}

process.exitCode = await main();
