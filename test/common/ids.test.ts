import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  keyNameProblem,
  machineIdProblem,
  normalizeTags,
  releaseIdProblem,
  rolloutIdProblem,
  tagProblem,
  tagsProblem,
} from "../../src/common/ids.js";

describe("machine ids", () => {
  for (const id of ["web-01", "db.eu-west.example.com", "A", "9host", "a_b", "x".repeat(128)]) {
    it(`accepts ${id.slice(0, 20)}`, () => assert.equal(machineIdProblem(id), undefined));
  }
  for (const [id, why] of [
    ["", /must not be empty/],
    ["x".repeat(129), /129 characters long; at most 128/],
    ["-web", /starting with a letter or digit/],
    [".web", /starting with a letter or digit/],
    ["web 01", /may contain only/],
    ["web/01", /may contain only/],
    ["../etc", /may contain only/],
    ["web;reboot", /may contain only/],
    ["wéb", /may contain only/],
  ] as const) {
    it(`rejects ${JSON.stringify(id.slice(0, 20))}`, () => assert.match(machineIdProblem(id) ?? "", why));
  }
});

describe("tags", () => {
  it("accepts common tag shapes", () => {
    for (const tag of ["web", "prod", "eu-west", "role:db", "tier=1", "k8s.io"])
      assert.equal(tagProblem(tag), undefined, tag);
  });
  it("rejects empty, long and odd tags and reports the index", () => {
    assert.match(tagProblem("") ?? "", /empty/);
    assert.match(tagProblem("t".repeat(65)) ?? "", /at most 64/);
    assert.deepEqual(tagsProblem(["web", "bad tag"]), { index: 1, reason: tagProblem("bad tag") });
    assert.equal(tagsProblem(Array.from({ length: 65 }, (_, i) => `t${i}`))?.index, 64);
    assert.equal(tagsProblem(["a", "b"]), undefined);
  });
  it("normalizes to a sorted set", () => {
    assert.deepEqual(normalizeTags(["web", "prod", "web", "eu"]), ["eu", "prod", "web"]);
  });
});

describe("other ids", () => {
  it("checks release and rollout ids", () => {
    assert.equal(releaseIdProblem("rel-0f0e5f3c-1a2b-4c3d-8e9f-001122334455"), undefined);
    assert.match(releaseIdProblem("r-0f0e5f3c-1a2b-4c3d-8e9f-001122334455") ?? "", /rel-<uuid>/);
    assert.equal(rolloutIdProblem("r-0f0e5f3c-1a2b-4c3d-8e9f-001122334455"), undefined);
    assert.match(rolloutIdProblem("r-nope") ?? "", /r-<uuid>/);
    assert.match(rolloutIdProblem("") ?? "", /empty/);
  });
  it("checks API key names", () => {
    assert.equal(keyNameProblem("ci-deploy"), undefined);
    assert.match(keyNameProblem("k".repeat(65)) ?? "", /at most 64/);
    assert.match(keyNameProblem("has space") ?? "", /may contain only/);
  });
});
