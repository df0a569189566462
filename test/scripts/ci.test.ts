/**
 * The README's test command is the one CI runs, and it brings what the tests need: `.ci/run` runs
 * exactly the README's command and installs nothing on the side; `npm test` starts with the
 * package check; the README names every package of the one list.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { it } from "node:test";
import { SYSTEM_PACKAGES } from "../../scripts/system-packages.js";

const REPO = join(import.meta.dirname, "..", "..");
const read = (p: string) => readFileSync(join(REPO, p), "utf8");

/** The command under the quick start's "# 2. Every test:" line, without its trailing comment. */
function readmeTestCommand(): string {
  const m = /# 2\. Every test:\n([^\n#]+)/.exec(read("README.md"));
  assert.ok(m, "README's quick start has a '# 2. Every test:' step");
  return m[1]!.trim();
}

it("the README's test command is npm ci && npm test, and .ci/run runs exactly it", () => {
  const command = readmeTestCommand();
  assert.equal(command, "npm ci && npm test");
  const commands = read(".ci/run")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"))
    .filter((l) => !/^(set |cd |echo )/.test(l));
  assert.deepEqual(commands, [command], ".ci/run runs the README's command and nothing else");
  assert.doesNotMatch(read(".ci/run"), /apt-get|dpkg|install -y/, ".ci/run installs nothing on the side");
});

it("npm test installs the system packages first, and the README names every one of them", () => {
  const scripts = JSON.parse(read("package.json")).scripts as Record<string, string>;
  assert.match(scripts["test"]!, /^npm run test:setup && /);
  assert.match(scripts["test:setup"]!, /scripts\/test-setup\.ts/);
  const readme = read("README.md");
  for (const p of SYSTEM_PACKAGES) assert.ok(readme.includes(`\`${p.pkg}\``), `README names ${p.pkg}`);
});

it("npm test runs the control-plane, e2e and CLI suites a second time on PostgreSQL, and the README says so", () => {
  const scripts = JSON.parse(read("package.json")).scripts as Record<string, string>;
  assert.match(scripts["test"]!, /&& npm run test:only && npm run test:postgres$/);
  const pg = scripts["test:postgres"]!;
  assert.match(pg, /^NIXFLEET_TEST_STORE=postgres node --import tsx --test /);
  for (const dir of ["control-plane", "e2e", "cli"])
    assert.ok(pg.includes(` test/${dir}/*.test.ts`), `covers test/${dir}`);
  // The same concurrency and timeout as the main run: CI's machine is as loaded for both.
  for (const flag of ["--test-concurrency=4", "--test-timeout=600000"]) {
    assert.ok(scripts["test:only"]!.includes(flag) && pg.includes(flag), `both runs use ${flag}`);
  }
  assert.ok(read("README.md").includes("`npm run test:postgres`"), "README describes the PostgreSQL run");
});
