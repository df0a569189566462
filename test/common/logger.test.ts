import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { describe, it } from "node:test";
import { createLogger } from "../../src/common/logger.js";

function capture(): { stream: Writable; lines: () => Record<string, unknown>[] } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  return {
    stream,
    lines: () =>
      chunks
        .join("")
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l)),
  };
}

describe("logger", () => {
  it("writes one JSON object per line with name, level label, time and base fields", () => {
    const out = capture();
    const log = createLogger({
      name: "nixfleet-agent",
      level: "info",
      destination: out.stream,
      base: { machineId: "web-01" },
    });
    log.info({ deploymentId: "d-1" }, "switched");
    log.debug("hidden at info");
    const [line, ...rest] = out.lines();
    assert.equal(rest.length, 0);
    assert.equal(line!["name"], "nixfleet-agent");
    assert.equal(line!["level"], "info");
    assert.equal(line!["msg"], "switched");
    assert.equal(line!["machineId"], "web-01");
    assert.equal(line!["deploymentId"], "d-1");
    assert.ok(!Number.isNaN(Date.parse(String(line!["time"]))));
  });

  it("redacts secrets and authorization headers", () => {
    const out = capture();
    const log = createLogger({ name: "t", destination: out.stream });
    log.info(
      { secret: "nfk-abc", headers: { authorization: "Bearer nfk-abc" }, req: { apiKey: "nfk-abc" } },
      "x",
    );
    const text = JSON.stringify(out.lines());
    assert.ok(!text.includes("nfk-abc"), text);
    assert.ok(text.includes("[redacted]"));
  });

  it("refuses an unknown level naming the choices", () => {
    assert.throws(
      () => createLogger({ name: "t", level: "loud" }),
      /log level "loud" is not one of fatal, error/,
    );
  });
});
