#!/usr/bin/env node
/**
 * Bundles the web dashboard (src/dashboard, preact) into dist/dashboard: app.js, app.css,
 * index.html, favicon.svg — the files the control plane serves (src/control-plane/http/dashboard.ts).
 * Part of `npm run build`, so the npm package and the Nix package ship it. Everything is local:
 * no CDN, no web fonts (the strict CSP would refuse them anyway).
 */
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const src = join(root, "src", "dashboard");
const out = join(root, "dist", "dashboard");

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const result = await build({
  entryPoints: { app: join(src, "main.tsx") },
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022"],
  jsx: "automatic",
  jsxImportSource: "preact",
  minify: true,
  legalComments: "eof",
  outdir: out,
  metafile: true,
  logLevel: "warning",
});
for (const file of ["index.html", "favicon.svg"]) copyFileSync(join(src, file), join(out, file));
const sizes = Object.entries(result.metafile.outputs)
  .map(([file, o]) => `${file.split("/").pop()} ${(o.bytes / 1024).toFixed(0)} KiB`)
  .join(", ");
process.stdout.write(`dashboard: ${sizes}\n`);
