/**
 * Another process's CPU time and resident memory, read from /proc (Linux), so the bench measures
 * a server from outside without instrumenting it.
 */
import { readFileSync } from "node:fs";

const TICKS_PER_SECOND = 100;

/** User + system CPU time of `pid`, in milliseconds (10 ms resolution: clock ticks). */
export function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the parenthesised command name (which may contain spaces); utime is field 14.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SECOND;
}

/** Resident set size of `pid`, in bytes. */
export function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** The soft limit on open files of `pid`. */
export function openFileLimit(pid: number | "self"): number {
  const m = /^Max open files\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/limits`, "utf8"));
  return m ? Number(m[1]) : Number.NaN;
}
