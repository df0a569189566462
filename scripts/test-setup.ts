/**
 * First step of `npm test`: makes sure the system packages the tests need are here, the way
 * `npm run demo` makes sure Nix is. As root on Debian, the missing ones are installed
 * (`apt-get update` once, then only those); anywhere else it prints exactly what to install and
 * goes on, and the tests that need a missing tool skip with a printed reason.
 *
 * Flags: --no-install (never install; only report).
 */
import {
  aptInstall,
  canInstall,
  installAdvice,
  missingPackages,
  SYSTEM_PACKAGES,
} from "./system-packages.js";

const log = (line: string) => process.stdout.write(`test-setup: ${line}\n`);
const noInstall = process.argv.includes("--no-install");

let missing = missingPackages();
if (missing.length > 0 && !noInstall && canInstall()) {
  try {
    aptInstall(missing, log);
  } catch (err) {
    // apt-get printed its own reason above; say what we were doing and how to do it by hand.
    process.stderr.write(
      [
        `test-setup: apt-get failed (${(err as Error).message.split("\n")[0]})`,
        ...installAdvice(missing),
        "",
      ].join("\n"),
    );
    process.exit(1);
  }
  missing = missingPackages();
}
if (missing.length === 0) {
  log(`system packages present: ${SYSTEM_PACKAGES.map((p) => p.pkg).join(" ")}`);
} else {
  process.stdout.write(
    [
      `test-setup: missing system packages; the tests that need them will be skipped:`,
      ...installAdvice(missing),
      "",
    ].join("\n"),
  );
}
