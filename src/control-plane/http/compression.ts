/**
 * The response compressions every path of the server offers (Connect's adapter and the raw gRPC
 * paths, so they all accept the same). Connect's own brotli codec compresses at zlib's default
 * quality, 11: about 7 s of CPU for a 2.5 MB GetFleetStatus at 10,000 machines, for any client that
 * lists `br` first. Quality 5 costs about what gzip does and still compresses better; decompression
 * is Connect's (it caps the output at the message size limit).
 */
import { promisify } from "node:util";
import { brotliCompress, constants } from "node:zlib";
import type { Compression } from "@connectrpc/connect/protocol";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";

const BROTLI_QUALITY = 5;
const brotli = promisify(brotliCompress);

export const compressionBrotliFast: Compression = {
  name: compressionBrotli.name,
  async compress(bytes) {
    const out = await brotli(bytes, { params: { [constants.BROTLI_PARAM_QUALITY]: BROTLI_QUALITY } });
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  },
  decompress: (bytes, readMaxBytes) => compressionBrotli.decompress(bytes, readMaxBytes),
};

export const COMPRESSIONS: Compression[] = [compressionGzip, compressionBrotliFast];
