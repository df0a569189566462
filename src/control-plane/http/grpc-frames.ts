/**
 * gRPC length-prefixed messages on a request body: a flag byte (bit 0: compressed), a 4-byte
 * big-endian length, the message. HTTP/2 DATA chunks split and join messages arbitrarily, so the
 * unfinished tail of one chunk waits for the next; in the usual case (whole messages per chunk)
 * nothing is copied.
 */
import { Code, ConnectError } from "@connectrpc/connect";

export interface GrpcFrame {
  compressed: boolean;
  payload: Buffer;
}

export interface SplitResult {
  frames: GrpcFrame[];
  /** The bytes of an unfinished message (null: none). */
  rest: Buffer | null;
}

/** Splits `pending + chunk` into whole messages; a message over `maxBytes` is RESOURCE_EXHAUSTED. */
export function splitFrames(pending: Buffer | null, chunk: Buffer, maxBytes: number): SplitResult {
  let buf = pending ? Buffer.concat([pending, chunk]) : chunk;
  const frames: GrpcFrame[] = [];
  while (buf.length >= 5) {
    const flags = buf[0]!;
    if ((flags & ~1) !== 0)
      throw new ConnectError(
        `request: message flag byte 0x${flags.toString(16).padStart(2, "0")} is not a gRPC message flag (0 or 1)`,
        Code.InvalidArgument,
      );
    const length = buf.readUInt32BE(1);
    if (length > maxBytes)
      throw new ConnectError(
        `request: a message of ${length} bytes is larger than the limit of ${maxBytes} bytes`,
        Code.ResourceExhausted,
      );
    if (buf.length < 5 + length) break;
    frames.push({ compressed: flags === 1, payload: buf.subarray(5, 5 + length) });
    buf = buf.subarray(5 + length);
  }
  return { frames, rest: buf.length > 0 ? Buffer.from(buf) : null };
}
