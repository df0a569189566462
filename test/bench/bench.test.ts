/**
 * `npm run bench -- --quick` as a smoke test: the benchmark must keep running and produce its
 * table and JSON (no timing is asserted — performance lives in the benchmark, not in tests).
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { it } from "node:test";

const REPO = join(import.meta.dirname, "..", "..");

it("npm run bench -- --quick runs every benchmark and writes its JSON", { timeout: 180_000 }, async () => {
  const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>(
    (resolve) =>
      execFile(
        process.execPath,
        ["--import", "tsx", join(REPO, "bench", "run.ts"), "--quick"],
        { cwd: REPO, timeout: 170_000, maxBuffer: 16 << 20 },
        (err, out, errOut) =>
          resolve({
            code: err ? Number((err as { code?: number }).code ?? 1) : 0,
            stdout: out,
            stderr: errOut,
          }),
      ),
  );
  assert.equal(code, 0, `${stdout}\n${stderr}`);
  assert.match(stdout, /^benchmark\s+value\s+baseline\s+baseline value\s+ratio$/m);
  const result = JSON.parse(readFileSync(join(REPO, "bench", "results", "latest.json"), "utf8")) as {
    parameters: { quick: boolean };
    results: { name: string; value: number; baselineValue: number; ratio: number }[];
  };
  assert.equal(result.parameters.quick, true);
  const names = result.results.map((r) => r.name);
  for (const want of [
    "grpc",
    "connect",
    "connect-json",
    "connect-get",
    "rest",
    "GetFleetStatus",
    "fan-out",
  ]) {
    assert.ok(
      names.some((n) => n.includes(want)),
      `${want} missing from ${names.join(", ")}`,
    );
  }
  for (const r of result.results) {
    assert.ok(
      r.value > 0 && r.baselineValue > 0 && Number.isFinite(r.ratio),
      `${r.name}: ${JSON.stringify(r)}`,
    );
  }
});
