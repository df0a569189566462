/**
 * A message for agents' push streams, encoded at most once however many streams it goes to: the
 * raw gRPC Session path writes the same length-prefixed frame to every stream that gets an
 * identical message (a heartbeat sweep, a poll hint, a desired generation with the same content),
 * while Connect's streams take the message shape and encode it themselves.
 */
import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { ControlMessageSchema } from "../../gen/nixfleet/v1/agent_pb.js";

export type ControlMessageInit = MessageInitShape<typeof ControlMessageSchema>;
export type OutgoingKind = NonNullable<ControlMessageInit["message"]>["case"];

export class OutgoingMessage {
  private frameBytes: Buffer | null = null;

  constructor(readonly init: ControlMessageInit) {}

  get kind(): OutgoingKind {
    return this.init.message?.case;
  }

  /** The gRPC frame: flag 0 (not compressed), 4-byte big-endian length, the encoded message. */
  frame(): Buffer {
    if (this.frameBytes) return this.frameBytes;
    const payload = toBinary(ControlMessageSchema, create(ControlMessageSchema, this.init));
    const out = Buffer.allocUnsafe(5 + payload.length);
    out[0] = 0;
    out.writeUInt32BE(payload.length, 1);
    out.set(payload, 5);
    this.frameBytes = out;
    return out;
  }
}
