/** `nixfleet completion bash|zsh|fish` and `-o json`, kubectl/gh habits. */
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { missingPackageReason } from "../../scripts/system-packages.js";
import { SHELLS } from "../../src/cli/commands/completion.js";
import { buildProgram } from "../../src/cli/main.js";
import { programArgs } from "../fixtures/programs.js";
import { tempDir } from "../fixtures/tmp.js";

const has = (shell: "zsh" | "fish") => missingPackageReason(shell) === undefined;
const REPO = join(import.meta.dirname, "..", "..");

function nixfleet(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) =>
    execFile(
      process.execPath,
      [...programArgs("cli"), ...args],
      { cwd: REPO, env: { ...process.env, ...env } },
      (err, stdout, stderr) =>
        resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    ),
  );
}

/** What bash offers after typing `words` (the last one being completed). */
function bashOffers(script: string, words: string[]): string[] {
  const r = spawnSync(
    "bash",
    [
      "-c",
      `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length - 1}; _nixfleet_complete; printf '%s\\n' "\${COMPREPLY[@]}"`,
    ],
    { encoding: "utf8" },
  );
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split("\n").filter(Boolean);
}

describe("nixfleet completion", () => {
  const program = buildProgram();

  it("bash: the script parses and completes commands, subcommands and their options", (t) => {
    const file = join(tempDir(t), "nixfleet.bash");
    writeFileSync(file, SHELLS.bash(program));
    assert.equal(spawnSync("bash", ["-n", file]).status, 0, "bash -n");
    const script = SHELLS.bash(program);
    assert.deepEqual(bashOffers(script, ["nixfleet", "rollout", "st"]), ["start", "status"]);
    assert.deepEqual(bashOffers(script, ["nixfleet", "ro"]), ["rollout"]);
    const flags = bashOffers(script, ["nixfleet", "--json", "rollout", "start", "--tags", "web", "--wa"]);
    assert.deepEqual(flags, ["--wait", "--wait-timeout"], "global flags and option values are skipped over");
    assert.ok(bashOffers(script, ["nixfleet", "status", "--"]).includes("--output"));
  });

  for (const shell of ["zsh", "fish"] as const) {
    it(`${shell}: the script parses`, {
      skip: has(shell) ? false : missingPackageReason(shell),
    }, (t) => {
      const file = join(tempDir(t), `nixfleet.${shell}`);
      writeFileSync(file, SHELLS[shell](program));
      const r = spawnSync(shell, ["-n", file], { encoding: "utf8" });
      assert.equal(r.status, 0, r.stderr);
      if (shell === "zsh") {
        // In a bare zsh (no .zshrc, so no compinit yet) it registers itself for nixfleet.
        const z = spawnSync("zsh", ["-f", "-c", `source ${file}; print -r -- $_comps[nixfleet]`], {
          encoding: "utf8",
        });
        assert.equal(z.stderr, "");
        assert.equal(z.stdout.trim(), "_bash_complete -o default -F _nixfleet_complete");
      } else {
        const offers = (line: string) =>
          spawnSync("fish", ["--no-config", "-c", `source ${file}; complete -C '${line}'`], {
            encoding: "utf8",
          })
            .stdout.split("\n")
            .filter(Boolean)
            .map((l) => l.split("\t")[0]);
        assert.deepEqual(offers("nixfleet rollout st"), ["start", "status"]);
        assert.deepEqual(offers("nixfleet rollout start --wa"), ["--wait", "--wait-timeout"]);
      }
    });
  }

  it("fish: every subcommand is offered under its group, options under their command", () => {
    const fish = SHELLS.fish(program);
    assert.match(fish, /^complete -c nixfleet -n '__fish_use_subcommand' -a rollout -d '/m);
    assert.match(
      fish,
      /-n '__fish_seen_subcommand_from rollout; and not __fish_seen_subcommand_from start list status/,
    );
    assert.match(
      fish,
      /-n '__fish_seen_subcommand_from rollout; and __fish_seen_subcommand_from start' -l wait -d /,
    );
    assert.match(fish, /-l ca-cert -r -d 'CA bundle that signed the control plane\\'s certificate/);
  });

  it("the command prints the script; an unknown shell is a usage error", async () => {
    const bash = await nixfleet(["completion", "bash"], {});
    assert.equal(bash.code, 0, bash.stderr);
    assert.match(bash.stdout, /complete -o default -F _nixfleet_complete nixfleet/);
    const bad = await nixfleet(["completion", "tcsh"], {});
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /shell must be bash, zsh or fish; got "tcsh"/);
  });
});

describe("-o json", () => {
  it("is --json; -o table is the default; anything else is a usage error", async (t) => {
    const env = { HOME: tempDir(t), NIXFLEET_CONTROL_PLANE_URL: "https://cp.example:8443" };
    const o = await nixfleet(["config", "-o", "json"], env);
    assert.equal(o.code, 0, o.stderr);
    const json = await nixfleet(["config", "--json"], env);
    assert.deepEqual(JSON.parse(o.stdout), JSON.parse(json.stdout));
    assert.equal(JSON.parse(o.stdout).settings.controlPlaneUrl, "https://cp.example:8443");
    const table = await nixfleet(["-o", "table", "config"], env);
    assert.match(table.stdout, /^controlPlaneUrl:/m);
    const bad = await nixfleet(["config", "-o", "yaml"], env);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /-o\/--output must be json or table; got "yaml"/);
  });
});
