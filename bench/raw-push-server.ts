/**
 * The push baseline closest to the runtime's limit: node:http2 alone. A Session is answered with
 * gRPC headers and an initial message written as pre-encoded bytes; a trigger encodes its
 * DesiredGenerationChanged once and writes the same frame to every stream. The agent's messages
 * are read and dropped.
 */
import { ControlMessageSchema } from "../src/gen/nixfleet/v1/agent_pb.js";
import { frame, SESSION_PATH } from "./grpc-frames.js";
import { listen } from "./push-server-common.js";

const streams = new Set<import("node:http2").ServerHttp2Stream>();
const initial = frame(ControlMessageSchema, {
  message: { case: "desiredGenerationChanged", value: { generation: { hash: "" } } },
});
const heartbeat = frame(ControlMessageSchema, {
  message: { case: "heartbeat", value: { intervalSeconds: 10 } },
});

listen(
  (req, res) => {
    if (req.url !== SESSION_PATH) {
      res.writeHead(404).end();
      return;
    }
    const stream = req.stream;
    stream.respond({ ":status": 200, "content-type": "application/grpc+proto" });
    stream.write(initial);
    stream.on("data", () => {});
    stream.on("error", () => {});
    streams.add(stream);
    stream.once("close", () => streams.delete(stream));
  },
  (hash) => {
    const bytes = frame(ControlMessageSchema, {
      message: { case: "desiredGenerationChanged", value: { generation: { hash } } },
    });
    for (const s of streams) s.write(bytes);
  },
  () => {
    for (const s of streams) s.write(heartbeat);
  },
);
