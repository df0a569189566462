import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  eventLine,
  finalVerdict,
  isTerminal,
  LiveBlock,
  rolloutLines,
  rowsOf,
} from "../../src/cli/progress.js";
import {
  BatchStatus,
  MachineGateState,
  RolloutEventSchema,
  RolloutEventType,
  RolloutSchema,
  RolloutStatus,
  RolloutStrategy,
} from "../../src/gen/nixfleet/v1/fleet_pb.js";

const T0 = Date.UTC(2026, 10, 26, 12, 0, 0);

function rollout(status: RolloutStatus, overrides: MessageInitShape<typeof RolloutSchema> = {}) {
  return create(RolloutSchema, {
    id: "r-1",
    releaseId: "rel-1",
    status,
    strategy: RolloutStrategy.CANARY,
    currentBatch: 1,
    batches: [
      {
        index: 0,
        status: BatchStatus.SUCCEEDED,
        healthy: 1,
        startedAt: timestampFromMs(T0),
        completedAt: timestampFromMs(T0 + 20_000),
        machines: [{ machineId: "web-01", state: MachineGateState.HEALTHY }],
      },
      {
        index: 1,
        status: BatchStatus.DEPLOYING,
        healthy: 1,
        pending: 1,
        unhealthy: 1,
        startedAt: timestampFromMs(T0 + 21_000),
        machines: [
          { machineId: "web-02", state: MachineGateState.HEALTHY },
          { machineId: "web-03", state: MachineGateState.PENDING },
          {
            machineId: "web-04",
            state: MachineGateState.UNHEALTHY,
            reason: "rolled back: health check web failed",
          },
        ],
      },
    ],
    ...overrides,
  });
}

describe("rollout progress rendering", () => {
  it("shows the headline, every batch with counts and elapsed time, and the current batch's machines", () => {
    const lines = rolloutLines(rollout(RolloutStatus.RUNNING), T0 + 81_000);
    assert.equal(lines[0], "rollout r-1  RUNNING  canary · release rel-1 · 4 machines · batch 2/2");
    assert.match(lines[1]!, /batch 1\/2 {2}succeeded .*1 healthy · 0 pending · 0 unhealthy 20s$/);
    assert.match(lines[2]!, /batch 2\/2 {2}deploying .*1 healthy · 1 pending · 1 unhealthy 1m$/);
    assert.match(lines[3]!, /✓ web-02 +healthy$/);
    assert.match(lines[4]!, /… web-03 +pending$/);
    assert.match(lines[5]!, /✗ web-04 +unhealthy: rolled back: health check web failed$/);
  });

  it("ends with exit 0 only for a completed rollout, and names the next command otherwise", () => {
    assert.equal(finalVerdict(rollout(RolloutStatus.COMPLETED)).exitCode, 0);
    const paused = finalVerdict(rollout(RolloutStatus.PAUSED));
    assert.equal(paused.exitCode, 1);
    assert.match(
      paused.lines[0]!,
      /PAUSED at batch 2\/2: unhealthy: web-04 \(rolled back: health check web failed\)/,
    );
    assert.ok(paused.lines.some((l) => l.includes("nixfleet rollout resume r-1")));
    assert.ok(paused.lines.some((l) => l.includes("nixfleet rollout cancel r-1 --revert")));
    const failed = finalVerdict(rollout(RolloutStatus.FAILED, { statusReason: "batch 2 failed; reverted" }));
    assert.equal(failed.exitCode, 1);
    assert.match(failed.lines[0]!, /FAILED at batch 2\/2: batch 2 failed; reverted/);
    assert.equal(finalVerdict(rollout(RolloutStatus.CANCELLED)).exitCode, 1);
  });

  it("knows which statuses are terminal", () => {
    assert.deepEqual(
      [
        RolloutStatus.RUNNING,
        RolloutStatus.PAUSED,
        RolloutStatus.COMPLETED,
        RolloutStatus.FAILED,
        RolloutStatus.CANCELLED,
      ].map(isTerminal),
      [false, false, true, true, true],
    );
  });

  it("renders events as time-stamped lines", () => {
    const e = create(RolloutEventSchema, {
      id: 3n,
      type: RolloutEventType.MACHINE_UNHEALTHY,
      batchIndex: 1,
      machineId: "web-04",
      message: "rolled back",
      createdAt: timestampFromMs(T0 + 5000),
    });
    assert.equal(eventLine(e), "[12:00:05] web-04 UNHEALTHY: rolled back");
    const started = create(RolloutEventSchema, {
      type: RolloutEventType.BATCH_STARTED,
      batchIndex: 0,
      createdAt: timestampFromMs(T0),
    });
    assert.equal(eventLine(started), "[12:00:00] batch 1 started");
    started.message = "batch 1 of 2 started: web-01";
    assert.equal(eventLine(started), "[12:00:00] batch 1 of 2 started: web-01", "no repeated batch label");
  });

  it("redraws in place: moves up over the previous block before writing", () => {
    let out = "";
    const block = new LiveBlock((s) => {
      out += s;
    });
    block.render(["a", "b"]);
    block.render(["c"], ["log line"]);
    assert.equal(out, "a\nb\n\x1b[2A\x1b[0Jlog line\nc\n");
  });
});

/**
 * Just enough of a terminal to see what an operator sees: text wraps at `width`, `\n` goes to the
 * next row's start, ESC[nA moves up, ESC[0J clears to the end of the screen.
 */
function terminal(width: number) {
  const rows: string[][] = [[]];
  let row = 0;
  let col = 0;
  const at = (r: number) => {
    while (rows.length <= r) rows.push([]);
    return rows[r]!;
  };
  return {
    write(s: string) {
      for (let i = 0; i < s.length; ) {
        // biome-ignore lint/suspicious/noControlCharactersInRegex: parsing the escapes is the point.
        const esc = /^\x1b\[(\d*)([AJ])/.exec(s.slice(i));
        if (esc) {
          if (esc[2] === "A") row = Math.max(0, row - Number(esc[1] || 1));
          else {
            at(row).length = Math.min(at(row).length, col);
            rows.length = row + 1;
          }
          i += esc[0].length;
          continue;
        }
        const ch = String.fromCodePoint(s.codePointAt(i)!);
        i += ch.length;
        if (ch === "\n") {
          row += 1;
          col = 0;
          at(row);
          continue;
        }
        if (col === width) {
          row += 1;
          col = 0;
        }
        at(row)[col] = ch;
        col += 1;
      }
    },
    screen: () => rows.map((r) => r.join("")),
  };
}

describe("live redraw in a narrow terminal", () => {
  it("counts wrapped rows: at 80 columns a long headline is redrawn in place, not piled up", () => {
    const term = terminal(80);
    const block = new LiveBlock(
      (s) => term.write(s),
      () => 80,
    );
    const r = rollout(RolloutStatus.RUNNING, {
      id: `r-${"x".repeat(60)}`,
      releaseId: `rel-${"y".repeat(40)}`,
    });
    const lines = rolloutLines(r, T0 + 81_000);
    assert.ok(lines[0]!.length > 120, "the headline wraps at 80 columns");
    for (let i = 0; i < 5; i++) block.render(lines, i === 2 ? ["[12:00:00] web-02 healthy"] : []);
    const screen = term.screen().join("\n");
    const copies = screen.split(`rollout r-${"x".repeat(60)}`).length - 1;
    assert.equal(copies, 1, `one headline on screen:\n${screen}`);
    assert.equal(
      screen.split("web-02 healthy\n").length - 1,
      1,
      "the log line scrolled above the block once",
    );
  });

  it("rowsOf: a line exactly as wide as the terminal takes one row; no width means no wrapping", () => {
    assert.equal(rowsOf("x".repeat(80), 80), 1);
    assert.equal(rowsOf("x".repeat(81), 80), 2);
    assert.equal(rowsOf("", 80), 1);
    assert.equal(rowsOf("✓ ·".repeat(40), 80), 2, "counted in characters, not UTF-8 bytes");
    assert.equal(rowsOf("x".repeat(500), undefined), 1);
  });
});
