/**
 * Reading the host's state from the file system: where current-system points, which
 * generation the system profile is on, whether a closure can be switched to, and whether
 * someone holds the switch lock.
 */
import { accessSync, constants, existsSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, join, resolve } from "node:path";
import { runCommand } from "./process.js";

/**
 * The store path a symlink such as /run/current-system designates. Follows up to a few levels
 * of links (a profile link is `system -> system-42-link -> /nix/store/…`) but never resolves
 * inside the store path, so the result compares equal to a generation string. Null when the
 * link does not exist.
 */
export function readSystemLink(path: string): string | null {
  let current = path;
  for (let hop = 0; hop < 8; hop++) {
    let target: string;
    try {
      target = readlinkSync(current);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return null;
      if (code === "EINVAL") return hop === 0 ? null : current; // not a link: `current` is the target
      throw err;
    }
    const next = isAbsolute(target) ? target : resolve(dirname(current), target);
    if (next.startsWith("/nix/store/")) return next.replace(/\/+$/, "");
    current = next;
  }
  throw new Error(`${path}: too many levels of symbolic links`);
}

/** The generation number the profile link points at (`system -> system-42-link`), or null. */
/** The kernel's boot id (one line, a UUID); null when it cannot be read. */
export function readBootId(path: string): string | null {
  try {
    const id = readFileSync(path, "utf8").trim();
    return id === "" ? null : id;
  } catch {
    return null;
  }
}

export function profileGeneration(profile: string): number | null {
  let target: string;
  try {
    target = readlinkSync(profile);
  } catch {
    return null;
  }
  const m = new RegExp(`^${escapeRe(basename(profile))}-(\\d+)-link$`).exec(basename(target));
  return m ? Number(m[1]) : null;
}

/** The store path of profile generation `n`, or null when that generation is gone. */
export function profileGenerationPath(profile: string, generation: number): string | null {
  return readSystemLink(join(dirname(profile), `${basename(profile)}-${generation}-link`));
}

function escapeRe(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Why `path` cannot be switched to (no executable bin/switch-to-configuration), or undefined. */
export function switchScriptProblem(path: string): string | undefined {
  const script = join(path, "bin", "switch-to-configuration");
  if (!existsSync(script)) return `${script} does not exist (not a NixOS system closure?)`;
  try {
    accessSync(script, constants.X_OK);
  } catch {
    return `${script} is not executable`;
  }
  return undefined;
}

export interface LockHolder {
  pid: number;
  command?: string;
}

export type SwitchLockState = { held: false } | { held: true; holder?: LockHolder };

/** Decodes a Linux dev_t into the "major:minor" hex form /proc/locks prints. */
function devKey(dev: number): string {
  const major = ((dev >> 8) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff);
  const minor = (dev & 0xff) | ((dev >> 12) & ~0xff & 0xfffff);
  return `${major.toString(16).padStart(2, "0")}:${minor.toString(16).padStart(2, "0")}`;
}

/** Who holds an flock on `path`, from /proc/locks (best effort; Linux only). */
export function lockHolder(path: string): LockHolder | undefined {
  try {
    const st = statSync(path);
    const key = `${devKey(st.dev)}:${st.ino}`;
    for (const line of readFileSync("/proc/locks", "utf8").split("\n")) {
      const fields = line.trim().split(/\s+/);
      // "1: FLOCK  ADVISORY  WRITE 11369 fe:00:2146420 0 EOF" (blocked waiters carry "->")
      if (fields[1] === "->") continue;
      if (fields[1] !== "FLOCK" || fields[5] !== key) continue;
      const pid = Number(fields[4]);
      if (!Number.isInteger(pid) || pid <= 0) return undefined;
      let command: string | undefined;
      try {
        command = readFileSync(`/proc/${pid}/cmdline`, "utf8")
          .split("\0")
          .filter(Boolean)
          .join(" ")
          .slice(0, 200);
      } catch {
        // the holder may have exited meanwhile
      }
      return command ? { pid, command } : { pid };
    }
  } catch {
    // no /proc, or the file vanished
  }
  return undefined;
}

/**
 * Whether /proc/locks lists any flock on an inode numbered like `path`'s (any device): false is
 * a sure "free" — a held flock is always listed — and spares a `flock` process per deploy;
 * true (or no /proc/locks) means ask flock itself. Inode numbers alone, because some file
 * systems (btrfs subvolumes, overlayfs) show another device in /proc/locks than stat does.
 * The limit: Linux lists a lock only while the process that took it is visible in this pid
 * namespace — a holder in another container sharing the file, or a lock left to a child by a
 * taker that exited, goes unseen. switch-to-configuration and nixos-rebuild hold the lock in the
 * process that took it (opened close-on-exec); a switch started against an unseen holder waits
 * for the lock, bounded by activationTimeout.
 */
function flockCandidate(path: string): boolean {
  let ino: number;
  let locks: string;
  try {
    ino = statSync(path).ino;
    locks = readFileSync("/proc/locks", "utf8");
  } catch {
    return true;
  }
  const suffix = `:${ino}`;
  for (const line of locks.split("\n")) {
    const fields = line.trim().split(/\s+/);
    // Blocked waiters ("->") hold nothing; only the holder's line counts.
    if (fields[1] === "FLOCK" && fields[5]?.endsWith(suffix)) return true;
  }
  return false;
}

/**
 * Whether another process holds switch-to-configuration's lock (a manual `nixos-rebuild`, or a
 * stuck switch). When /proc/locks shows no flock on the file, it is free; otherwise `flock
 * --nonblock` on the real file decides, so a held lock is judged exactly as
 * switch-to-configuration would meet it. A missing lock file means nobody holds it.
 */
export async function checkSwitchLock(lockPath: string, timeoutMs = 10_000): Promise<SwitchLockState> {
  if (!existsSync(lockPath) || !flockCandidate(lockPath)) return { held: false };
  const result = await runCommand(["flock", "--nonblock", "--conflict-exit-code", "75", lockPath, "true"], {
    timeoutMs,
  });
  if (result.code === 0) return { held: false };
  if (result.code === 75) {
    const holder = lockHolder(lockPath);
    return holder ? { held: true, holder } : { held: true };
  }
  throw new Error(
    `cannot check the switch lock ${lockPath}: flock ${result.spawnError ?? `exited ${result.code}`}: ${result.stderr.trim()}`,
  );
}

export function describeLock(lockPath: string, state: SwitchLockState): string {
  if (!state.held) return `${lockPath} is free`;
  const who = state.holder
    ? ` by pid ${state.holder.pid}${state.holder.command ? ` (${state.holder.command})` : ""}`
    : "";
  return `the switch lock ${lockPath} is held${who}`;
}
