/**
 * The system (Debian) packages the tests and the demo need, declared once. `npm test` installs
 * the missing ones through scripts/test-setup.ts, `npm run demo` installs the ones it needs; CI
 * runs nothing else (`.ci/run` is exactly the README's `npm ci && npm test`). A later need (a
 * PostgreSQL server, systemd-container) is one more entry here.
 *
 * Each entry says how to tell it is present without dpkg, so the same list serves machines that
 * are not Debian: there the tests that need a missing tool skip and say which package brings it.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";

export interface SystemPackage {
  /** Debian package name. */
  pkg: string;
  /** What needs it, printed when it is missing. */
  why: string;
  /** Whether what the package brings is usable here. */
  present(): boolean;
}

const runs =
  (command: string, ...args: string[]) =>
  () =>
    spawnSync(command, args, { stdio: "ignore" }).status === 0;
const exists = (path: string) => () => existsSync(path);
/** Debian's python3-* packages install for this interpreter, not for whatever `python3` is first on PATH. */
export const DEBIAN_PYTHON = "/usr/bin/python3";

export const SYSTEM_PACKAGES: readonly SystemPackage[] = [
  {
    pkg: "nix-bin",
    why: "the agents fetch and switch real Nix store paths",
    present: runs("nix", "--version"),
  },
  {
    pkg: "python3-grpcio",
    why: "a foreign gRPC client in the interop tests",
    present: runs(DEBIAN_PYTHON, "-c", "import grpc"),
  },
  {
    pkg: "python3-grpc-tools",
    why: "generates that Python client from proto/",
    present: runs(DEBIAN_PYTHON, "-c", "import grpc_tools"),
  },
  {
    pkg: "grpc-proto",
    why: "gRPC's own .proto files (reflection)",
    present: exists("/usr/share/grpc-proto"),
  },
  { pkg: "openssl", why: "test PKI: CAs and certificates", present: runs("openssl", "version") },
  {
    pkg: "ca-certificates",
    why: "the system trust store",
    present: exists("/etc/ssl/certs/ca-certificates.crt"),
  },
  { pkg: "git", why: "`buf breaking` against main; flake revisions", present: runs("git", "--version") },
  { pkg: "chromium", why: "the dashboard's browser tests", present: exists("/usr/bin/chromium") },
  {
    pkg: "systemd-container",
    why: "the systemd tier: the agent's unit in nspawn containers",
    present: exists("/usr/bin/systemd-nspawn"),
  },
  {
    pkg: "postgresql",
    why: "the PostgreSQL store's tests",
    present: exists("/usr/lib/postgresql/15/bin/initdb"),
  },
  { pkg: "zsh", why: "checks `nixfleet completion zsh`", present: runs("zsh", "-fc", "exit 0") },
  {
    pkg: "fish",
    why: "checks `nixfleet completion fish`",
    present: runs("fish", "--no-config", "-c", "exit 0"),
  },
];

export function systemPackage(name: string): SystemPackage {
  const p = SYSTEM_PACKAGES.find((x) => x.pkg === name);
  if (!p) throw new Error(`${name} is not in SYSTEM_PACKAGES (scripts/system-packages.ts)`);
  return p;
}

/**
 * Why a test needing `pkg` cannot run here, or undefined when it can. For `it(…, { skip })`:
 * node:test prints the reason next to the skipped test.
 */
export function missingPackageReason(name: string): string | undefined {
  const p = systemPackage(name);
  return p.present() ? undefined : `needs Debian's ${p.pkg} (${p.why}): apt-get install -y ${p.pkg}`;
}

export function missingPackages(names?: readonly string[]): SystemPackage[] {
  return SYSTEM_PACKAGES.filter((p) => (!names || names.includes(p.pkg)) && !p.present());
}

/** Root on a machine with apt-get: the case where we install instead of asking. */
export function canInstall(): boolean {
  return process.getuid?.() === 0 && spawnSync("apt-get", ["--version"], { stdio: "ignore" }).status === 0;
}

/** `apt-get update` once, then installs only the given packages (no recommends). */
export function aptInstall(pkgs: readonly SystemPackage[], log: (line: string) => void): void {
  const names = pkgs.map((p) => p.pkg);
  log(`installing Debian's ${names.join(" ")} (apt-get install -y --no-install-recommends)…`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  execFileSync("apt-get", ["update", "-qq"], { stdio: "inherit", env });
  execFileSync("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...names], {
    stdio: "inherit",
    env,
  });
}

/** What to tell someone who has to install them by hand. */
export function installAdvice(pkgs: readonly SystemPackage[]): string[] {
  return [
    ...pkgs.map((p) => `  ${p.pkg.padEnd(20)} ${p.why}`),
    `install them (Debian/Ubuntu, as root):  apt-get install -y --no-install-recommends ${pkgs.map((p) => p.pkg).join(" ")}`,
  ];
}
