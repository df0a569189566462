/**
 * Bad input that the Connect library reports as INTERNAL, answered as INVALID_ARGUMENT instead.
 *
 * @connectrpc/connect 2.x wraps every failure to decode a binary request ("parse binary: premature
 * EOF", invalid UTF-8 in a string field) and a compressed-flagged message without a negotiated
 * compression in `Code.Internal` — the same code as a bug in our handlers, so fuzzed or truncated
 * input looked like server faults. The library offers no hook before it decodes a request, so:
 *
 * - streaming RPCs (Session, Watch): the request messages are decoded lazily inside the
 *   interceptor chain, so an interceptor maps the error as it is thrown;
 * - unary RPCs are decoded before any interceptor runs: their handler is wrapped and the error in
 *   the response is rewritten with the library's own codecs (Connect JSON error, gRPC trailers,
 *   gRPC-web trailer frame).
 *
 * Only errors the library raises while decoding the request match (`badInputMessage`); a real
 * internal error keeps its code. A Connect GET's base64 `message` is checked before the handler
 * runs, because the library answers undecodable base64 with a bare "internal error".
 */
import type { DescMessage } from "@bufbuild/protobuf";
import { base64Decode } from "@bufbuild/protobuf/wire";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { UniversalHandler, UniversalServerResponse } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, errorFromJsonBytes, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { findTrailerError, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { trailerParse, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";

const PARSE_BINARY = "parse binary: ";
const COMPRESSED_WITHOUT_ENCODING = "received compressed envelope, but do not know how to decompress";
const GRPC_WEB_TRAILER_FLAG = 0x80;

/** The INVALID_ARGUMENT message for a library decoding error, or null when it is not one. */
export function badInputMessage(error: ConnectError, input: DescMessage): string | null {
  if (error.code !== Code.Internal) return null;
  if (error.rawMessage.startsWith(PARSE_BINARY))
    return `request: not a valid binary ${input.typeName}: ${error.rawMessage.slice(PARSE_BINARY.length)}`;
  if (error.rawMessage === COMPRESSED_WITHOUT_ENCODING)
    return "grpc-encoding: a message is flagged as compressed, but the request names no compression";
  return null;
}

function remapped(error: ConnectError, input: DescMessage): ConnectError | null {
  const message = badInputMessage(error, input);
  return message === null ? null : new ConnectError(message, Code.InvalidArgument, error.metadata);
}

/** Maps decoding errors of streamed request messages (every protocol). */
export function streamDecodeErrorInterceptor(): Interceptor {
  return (next) => async (req) => {
    if (!req.stream) return next(req);
    const source = req.message;
    const input = req.method.input;
    async function* mapped() {
      try {
        yield* source;
      } catch (err) {
        if (err instanceof ConnectError) throw remapped(err, input) ?? err;
        throw err;
      }
    }
    return next({ ...req, message: mapped() });
  };
}

async function collect(body: AsyncIterable<Uint8Array> | undefined): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  if (body) for await (const c of body) chunks.push(c);
  return Buffer.concat(chunks);
}

async function* once(bytes: Uint8Array): AsyncIterable<Uint8Array> {
  yield bytes;
}

/** Connect unary: an error is a JSON body with an HTTP status. */
async function rewriteConnectUnary(res: UniversalServerResponse, input: DescMessage) {
  const header = res.header!;
  const bytes = await collect(res.body);
  const replace = () => ({ ...res, body: once(bytes) });
  // A compressed error body is left alone (errors are far below the compression threshold).
  if (header.get("content-encoding")) return replace();
  let mapped: ConnectError | null;
  try {
    mapped = remapped(errorFromJsonBytes(bytes, undefined, new ConnectError("not an error body")), input);
  } catch {
    mapped = null;
  }
  if (!mapped) return replace();
  const body = errorToJsonBytes(mapped, undefined);
  header.set("content-length", String(body.byteLength));
  return { ...res, status: codeToHttpStatus(Code.InvalidArgument), header, body: once(body) };
}

/** gRPC: the status travels in the trailers, filled in once the body has ended. */
function rewriteGrpc(res: UniversalServerResponse, input: DescMessage): UniversalServerResponse {
  const trailer = res.trailer;
  const body = res.body;
  if (!trailer || !body) return res;
  async function* fixed() {
    yield* body!;
    const error = findTrailerError(trailer!);
    const mapped = error ? remapped(error, input) : null;
    if (mapped) setTrailerStatus(trailer!, mapped);
  }
  return { ...res, body: fixed() };
}

/** gRPC-web: a unary error is one trailer frame in the body. */
async function rewriteGrpcWeb(res: UniversalServerResponse, input: DescMessage) {
  const bytes = await collect(res.body);
  const replace = () => ({ ...res, body: once(bytes) });
  const onlyTrailer =
    bytes.length >= 5 && bytes[0] === GRPC_WEB_TRAILER_FLAG && bytes.readUInt32BE(1) === bytes.length - 5;
  if (!onlyTrailer) return replace();
  const trailer = trailerParse(bytes.subarray(5));
  const error = findTrailerError(trailer);
  const mapped = error ? remapped(error, input) : null;
  if (!mapped) return replace();
  setTrailerStatus(trailer, mapped);
  const data = trailerSerialize(trailer);
  const frame = Buffer.alloc(5 + data.byteLength);
  frame[0] = GRPC_WEB_TRAILER_FLAG;
  frame.writeUInt32BE(data.byteLength, 1);
  frame.set(data, 5);
  return { ...res, body: once(frame) };
}

/**
 * A Connect GET whose `message` is not base64 (with `base64=1`): the library's decoder throws a
 * plain Error there, which it answers as "internal error"; decoding it first with the same
 * function tells bad input apart.
 */
function connectGetProblem(req: Parameters<UniversalHandler>[0]): UniversalServerResponse | null {
  if (req.method !== "GET") return null;
  const query = new URL(req.url).searchParams;
  if (query.get("base64") !== "1") return null;
  try {
    base64Decode(query.get("message") ?? "");
    return null;
  } catch (err) {
    const error = new ConnectError(
      `message: not valid base64 (${err instanceof Error ? err.message : String(err)})`,
      Code.InvalidArgument,
    );
    const body = errorToJsonBytes(error, undefined);
    return {
      status: codeToHttpStatus(Code.InvalidArgument),
      header: new Headers({ "content-type": "application/json", "content-length": String(body.byteLength) }),
      body: once(body),
    };
  }
}

/** Wraps a unary method's handler so decoding errors in its response become INVALID_ARGUMENT. */
export function mapUnaryDecodeErrors(handler: UniversalHandler): UniversalHandler {
  if (handler.method.methodKind !== "unary") return handler;
  const input = handler.method.input;
  const wrapped = async (req: Parameters<UniversalHandler>[0]): Promise<UniversalServerResponse> => {
    const refused = connectGetProblem(req);
    if (refused) return refused;
    const res = await handler(req);
    const type = res.header?.get("content-type") ?? "";
    if (type.startsWith("application/grpc-web")) return rewriteGrpcWeb(res, input);
    if (type.startsWith("application/grpc")) return rewriteGrpc(res, input);
    if (res.status === codeToHttpStatus(Code.Internal) && type.startsWith("application/json"))
      return rewriteConnectUnary(res, input);
    return res;
  };
  return Object.assign(wrapped, {
    service: handler.service,
    method: handler.method,
    requestPath: handler.requestPath,
    supportedContentType: handler.supportedContentType,
    protocolNames: handler.protocolNames,
    allowedMethods: handler.allowedMethods,
  });
}
