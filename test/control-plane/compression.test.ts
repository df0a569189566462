/**
 * The server's brotli codec (src/control-plane/http/compression.ts): a lower quality than
 * Connect's, so what it writes must still be plain brotli that any client (here Connect's own
 * codec, which enforces the size limit) reads back unchanged.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { compressionBrotli } from "@connectrpc/connect-node";
import { COMPRESSIONS, compressionBrotliFast } from "../../src/control-plane/http/compression.js";

/** Something shaped like a large GetFleetStatus: many similar records. */
function fleetLike(n: number): Uint8Array {
  const rows = Array.from(
    { length: n },
    (_, i) =>
      `machine-${i}\u0012/nix/store/${String(i).padStart(32, "a")}-nixos-system-web-${i}\u001aDEPLOYED`,
  );
  return new TextEncoder().encode(rows.join("\n"));
}

describe("response compression", () => {
  it("offers gzip and br, in that order", () => {
    assert.deepEqual(
      COMPRESSIONS.map((c) => c.name),
      ["gzip", "br"],
    );
  });

  it("writes brotli that Connect's codec reads back, smaller than the input", async () => {
    const input = fleetLike(20_000);
    const packed = await compressionBrotliFast.compress(input);
    assert.ok(packed.byteLength < input.byteLength / 5, `${packed.byteLength} of ${input.byteLength} bytes`);
    const back = await compressionBrotli.decompress(packed, input.byteLength);
    assert.ok(Buffer.from(back).equals(Buffer.from(input)), "the same bytes come back");
    await assert.rejects(
      compressionBrotliFast.decompress(packed, 1024),
      /larger than configured readMaxBytes 1024/,
    );
  });
});
