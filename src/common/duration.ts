/**
 * The one duration parser of all three programs (agent config, control-plane flags, CLI flags and
 * files), so "5m" means the same everywhere. A bare number is seconds — our files and flags count
 * in seconds — and anything with a unit ("500ms", "30s", "5m", "2h", "1d", "1.5h", "2 days") is
 * read by the `ms` library.
 */
import ms from "ms";

/** Seconds for "30", 30, "1.5s", "500ms", "5m", "2h", "1d"; undefined when malformed or negative. */
export function parseDuration(value: string | number): number | undefined {
  if (typeof value === "number") return Number.isFinite(value) && value >= 0 ? value : undefined;
  const text = value.trim();
  if (text === "") return undefined;
  if (/^\d+(?:\.\d+)?$/.test(text)) return Number(text);
  // ms() also takes a bare number as milliseconds and negative values; neither is a duration here.
  if (!/^\d/.test(text)) return undefined;
  const millis = ms(text as ms.StringValue);
  return typeof millis === "number" && Number.isFinite(millis) && millis >= 0 ? millis / 1000 : undefined;
}

/** What a malformed duration should have looked like, for error messages. */
export const DURATION_HINT = 'a number of seconds or a duration like "500ms", "30s", "5m", "2h"';
