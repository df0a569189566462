/**
 * Builds the dashboard bundle (dist/dashboard) when it is missing or older than its sources, so
 * running one browser test file after an edit never shows a stale page. `npm run build` does
 * the same as part of the whole build.
 *
 * Plain module: no node:test imports.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT } from "../fixtures/programs.js";

function newest(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

export function ensureDashboardBuilt(): void {
  const bundle = join(REPO_ROOT, "dist", "dashboard", "app.js");
  const sources = Math.max(
    newest(join(REPO_ROOT, "src", "dashboard")),
    newest(join(REPO_ROOT, "src", "gen")),
  );
  if (existsSync(bundle) && statSync(bundle).mtimeMs >= sources) return;
  execFileSync(process.execPath, [join(REPO_ROOT, "scripts", "build-dashboard.mjs")], { stdio: "inherit" });
}
