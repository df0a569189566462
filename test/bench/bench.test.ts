/**
 * `npm run bench -- --quick --streams 200` as a smoke test: the benchmark must keep running and
 * produce its tables and JSON, every push must arrive on every stream of all three servers and
 * the reconnect storm must end (no timing is asserted — performance lives in the benchmark).
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { it } from "node:test";

const REPO = join(import.meta.dirname, "..", "..");

it("npm run bench -- --quick --streams 200 runs every benchmark and writes its JSON", {
  timeout: 900_000,
}, async () => {
  const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>(
    (resolve) =>
      execFile(
        process.execPath,
        ["--import", "tsx", join(REPO, "bench", "run.ts"), "--quick", "--streams", "200"],
        { cwd: REPO, timeout: 880_000, maxBuffer: 16 << 20 },
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
  assert.match(stdout, /^figure\s+nixfleet\s+naive connect-node\s+raw node:http2\s*$/m);
  const result = JSON.parse(readFileSync(join(REPO, "bench", "results", "latest.json"), "utf8")) as {
    parameters: { quick: boolean; streams: number };
    results: { name: string; value: number; baselineValue: number; ratio: number }[];
    scale: {
      target: string;
      failedConnects: number;
      rounds: { missing: number }[];
      reportRps?: number;
      reportErrors?: number;
      storeLoopRps?: number;
      fleetStatusMs?: number;
      storm?: { seconds: number };
    }[];
  };
  assert.equal(result.parameters.quick, true);
  assert.equal(result.parameters.streams, 200);
  assert.deepEqual(
    result.scale.map((s) => s.target),
    ["nixfleet", "naive connect-node", "raw node:http2"],
  );
  for (const s of result.scale) {
    assert.equal(s.failedConnects, 0, `${s.target}: every stream connects`);
    assert.ok(
      s.rounds.length > 0 && s.rounds.every((r) => r.missing === 0),
      `${s.target}: every push arrived`,
    );
  }
  const nf = result.scale[0]!;
  assert.equal(nf.reportErrors, 0, "Reports are accepted");
  assert.ok(nf.reportRps! > 0 && nf.storeLoopRps! > 0 && nf.fleetStatusMs! > 0, JSON.stringify(nf));
  assert.ok(nf.storm && nf.storm.seconds > 0, "every stream came back after the restart");
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
