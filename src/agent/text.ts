/**
 * Shortening tool output for reports and logs. Reports carry at most 4096 bytes (contract), and
 * what an operator needs from Nix's stderr is the `error:` line, not pages of progress.
 */

/** The contract's limit on ReportRequest.message. */
export const MAX_REPORT_MESSAGE_BYTES = 4096;

// biome-ignore lint/suspicious/noControlCharactersInRegex: matching terminal escapes is the point
const ANSI_RE = /\u001b\[[0-9;?]*[A-Za-z]/g;

/** Cuts `text` to at most `maxBytes` of UTF-8 without splitting a character, marking the cut. */
export function truncateUtf8(text: string, maxBytes: number): string {
  if (Buffer.byteLength(text, "utf8") <= maxBytes) return text;
  const marker = " …[truncated]";
  const budget = Math.max(0, maxBytes - Buffer.byteLength(marker, "utf8"));
  let out = Buffer.from(text, "utf8").subarray(0, budget).toString("utf8");
  // A cut in the middle of a multi-byte character decodes to U+FFFD; drop it.
  out = out.replace(/\uFFFD+$/, "");
  return out + marker;
}

/**
 * Reduces a program's stderr to what matters: escapes stripped, blank lines dropped, `error:`
 * lines first, then the last lines, all within `maxBytes`.
 */
export function trimOutput(text: string, maxBytes = 1024): string {
  const lines = text
    .replace(ANSI_RE, "")
    .split(/\r?\n/)
    .map((l) => l.trimEnd())
    .filter((l) => l.trim().length > 0);
  if (lines.length === 0) return "";
  const errors = lines.filter((l) => /^\s*error:/.test(l));
  const rest = lines.filter((l) => !/^\s*error:/.test(l));
  const picked: string[] = [...errors];
  // Add trailing context lines (newest last) while they fit.
  const tail: string[] = [];
  let size = Buffer.byteLength(picked.join("\n"), "utf8");
  for (let i = rest.length - 1; i >= 0; i--) {
    const line = rest[i]!;
    const add = Buffer.byteLength(line, "utf8") + 1;
    if (size + add > maxBytes) break;
    tail.unshift(line);
    size += add;
  }
  const omitted = rest.length - tail.length;
  const out = [...picked, ...(omitted > 0 && tail.length > 0 ? ["…"] : []), ...tail].join("\n");
  return truncateUtf8(out, maxBytes);
}

/** Duration for humans: "850 ms", "12 s", "3 min 5 s". */
export function formatSeconds(seconds: number): string {
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${Number(seconds.toFixed(seconds < 10 ? 1 : 0))} s`;
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds - m * 60);
  return s ? `${m} min ${s} s` : `${m} min`;
}
