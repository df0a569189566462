/**
 * Whether a module is the program being run (`node dist/agent/main.js`, `tsx src/agent/main.ts`,
 * or an npm/Nix bin that links or wraps it) rather than imported. argv[1] may be a symlink (npm's
 * node_modules/.bin), so both sides are compared as real paths.
 */
import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";

export function isMainModule(importMetaUrl: string): boolean {
  const invoked = process.argv[1];
  if (!invoked) return false;
  try {
    return realpathSync(invoked) === realpathSync(fileURLToPath(importMetaUrl));
  } catch {
    return false;
  }
}
