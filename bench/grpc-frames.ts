/**
 * gRPC length-prefixed framing for the bench's raw HTTP/2 peers (the raw baseline server and the
 * load generator), so both speak the exact wire format of the agent's Session without Connect.
 */

import type { MessageInitShape } from "@bufbuild/protobuf";
import { create, type DescMessage, fromBinary, type MessageShape, toBinary } from "@bufbuild/protobuf";

/** One encoded gRPC message: flag byte 0 (uncompressed), 4-byte big-endian length, payload. */
export function frame<D extends DescMessage>(schema: D, init: MessageInitShape<D>): Buffer {
  const payload = toBinary(schema, create(schema, init));
  const out = Buffer.alloc(5 + payload.length);
  out.writeUInt32BE(payload.length, 1);
  out.set(payload, 5);
  return out;
}

/** Feeds chunks of a gRPC body in, calls `onMessage` with each decoded message. */
export function frameReader<D extends DescMessage>(schema: D, onMessage: (m: MessageShape<D>) => void) {
  let buf: Buffer = Buffer.alloc(0);
  return (chunk: Buffer) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    while (buf.length >= 5) {
      const len = buf.readUInt32BE(1);
      if (buf.length < 5 + len) break;
      onMessage(fromBinary(schema, buf.subarray(5, 5 + len)));
      buf = buf.subarray(5 + len);
    }
  };
}

import type { ReportRequestSchema } from "../src/gen/nixfleet/v1/agent_pb.js";
import { Outcome } from "../src/gen/nixfleet/v1/types_pb.js";

export const SESSION_PATH = "/nixfleet.v1.AgentService/Session";

/** The Report every simulated agent sends (the load generator's RPC and the bare store loop). */
export function benchReport(machineId: string): MessageInitShape<typeof ReportRequestSchema> {
  return {
    machineId,
    currentGeneration: `/nix/store/${"0".repeat(32)}-nixos-system-bench`,
    success: true,
    outcome: Outcome.UP_TO_DATE,
    message: "bench",
    tags: ["bench"],
    agentVersion: "bench",
  };
}
