#!/usr/bin/env node
/**
 * Bundles the agent (after tsc) into one file, dist/agent/main.js, in place of tsc's entry point —
 * so every way of starting it (the npm bin, the Nix package's wrapper, the tests and the bench)
 * runs the bundle. Why: an agent idles on every host of a fleet, and Node keeps the source text
 * and module records of every module it loaded (~320 for the agent, zod's locales among them);
 * one tree-shaken, whitespace-minified file made the idle agent ~10 MB smaller and its start
 * about twice as cheap (docs/agent.md, "Memory and CPU"). Identifiers are kept, so stack traces
 * still name functions; the source map leads back to src/.
 *
 * better-sqlite3 stays external (a native addon, loaded from node_modules as before).
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const entry = join(root, "dist", "agent", "main.js");

const result = await build({
  entryPoints: [entry],
  outfile: entry,
  allowOverwrite: true,
  bundle: true,
  format: "esm",
  platform: "node",
  target: ["node20"],
  external: ["better-sqlite3"],
  // CommonJS dependencies (pino, prom-client, commander) call require() for Node's own modules.
  banner: {
    js: 'import { createRequire as __createRequire } from "node:module"; const require = __createRequire(import.meta.url);',
  },
  minifyWhitespace: true,
  minifySyntax: true,
  keepNames: true,
  sourcemap: true,
  legalComments: "none",
  metafile: true,
  logLevel: "warning",
});
const bytes = Object.values(result.metafile.outputs).find((o) => o.entryPoint)?.bytes ?? 0;
process.stdout.write(`agent: main.js ${(bytes / 1024).toFixed(0)} KiB (bundled)\n`);
