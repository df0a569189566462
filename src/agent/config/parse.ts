/** Validation of one configuration object against the declarations: pure, no I/O. */
import { configErrorFrom } from "./errors.js";
import { type AgentConfig, agentConfigSchema } from "./schema.js";

/** Parses the merged object; `sourceOf` names where a key's value came from, for errors. */
export function parseWithSources(raw: unknown, sourceOf: (key: string) => string): AgentConfig {
  const result = agentConfigSchema.safeParse(raw ?? {});
  if (!result.success) throw configErrorFrom(result.error, sourceOf);
  return result.data;
}

/**
 * Parses a configuration object (the JSON file's content) into the fully defaulted config.
 * `source` names where it came from (a file path) and appears in every error.
 * Pure: reads no files (machineId falls back to the host name).
 */
export function parseAgentConfig(raw: unknown, source: string): AgentConfig {
  return parseWithSources(raw, () => source);
}
