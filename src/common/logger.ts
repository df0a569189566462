/**
 * The pino logger every program uses: JSON lines on stdout (journald keeps them), the level from
 * the caller or NIXFLEET_LOG_LEVEL, and secrets redacted wherever they could appear.
 */
import { type DestinationStream, type LevelWithSilent, type Logger, pino } from "pino";

export type { Logger };

export const LOG_LEVELS: readonly LevelWithSilent[] = [
  "fatal",
  "error",
  "warn",
  "info",
  "debug",
  "trace",
  "silent",
];

export interface LoggerOptions {
  /** Program name, logged as `name` on every line. */
  name: string;
  level?: string | undefined;
  /** Where lines go; stdout when omitted (tests pass a stream to read them back). */
  destination?: DestinationStream | undefined;
  /** Fields merged into every line (e.g. machineId). */
  base?: Record<string, unknown>;
}

export function isLogLevel(value: string): value is LevelWithSilent {
  return (LOG_LEVELS as readonly string[]).includes(value);
}

export function createLogger(options: LoggerOptions): Logger {
  const level = options.level ?? process.env["NIXFLEET_LOG_LEVEL"] ?? "info";
  if (!isLogLevel(level)) {
    throw new Error(`log level ${JSON.stringify(level)} is not one of ${LOG_LEVELS.join(", ")}`);
  }
  return pino(
    {
      name: options.name,
      level,
      base: { pid: process.pid, ...options.base },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: {
        paths: [
          "authorization",
          "apiKey",
          "secret",
          "*.authorization",
          "*.apiKey",
          "*.secret",
          "headers.authorization",
        ],
        censor: "[redacted]",
      },
    },
    options.destination ?? pino.destination({ dest: 1, sync: true }),
  );
}
