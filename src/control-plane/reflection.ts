/**
 * gRPC server reflection (v1, and the older v1alpha some clients still try first), answered from
 * the descriptors protoc-gen-es embeds in src/gen. It lets grpcurl, buf curl and Postman list and
 * call our services without the .proto files.
 */
import type { DescEnum, DescExtension, DescFile, DescMessage, DescService } from "@bufbuild/protobuf";
import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ConnectRouter } from "@connectrpc/connect";
import * as v1 from "../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../gen/grpc/reflection/v1alpha/reflection_pb.js";

/** Everything reflection needs to know, indexed once at start-up. */
export class DescriptorIndex {
  readonly serviceNames: string[];
  private readonly files = new Map<string, DescFile>();
  private readonly symbols = new Map<string, DescFile>();
  private readonly extensions: DescExtension[] = [];

  constructor(services: readonly DescService[]) {
    this.serviceNames = services.map((s) => s.typeName).sort();
    for (const service of services) this.addFile(service.file);
  }

  private addFile(file: DescFile): void {
    const name = file.proto.name;
    if (this.files.has(name)) return;
    this.files.set(name, file);
    for (const dep of file.dependencies) this.addFile(dep);
    const addEnum = (e: DescEnum) => this.symbols.set(e.typeName, file);
    const addExtension = (x: DescExtension) => {
      this.symbols.set(x.typeName, file);
      this.extensions.push(x);
    };
    const addMessage = (m: DescMessage) => {
      this.symbols.set(m.typeName, file);
      m.nestedMessages.forEach(addMessage);
      m.nestedEnums.forEach(addEnum);
      m.nestedExtensions.forEach(addExtension);
    };
    file.messages.forEach(addMessage);
    file.enums.forEach(addEnum);
    file.extensions.forEach(addExtension);
    for (const service of file.services) {
      this.symbols.set(service.typeName, file);
      for (const method of service.methods) this.symbols.set(`${service.typeName}.${method.name}`, file);
    }
  }

  fileByName(name: string): DescFile | undefined {
    return this.files.get(name);
  }

  /** Services, methods, messages, enums, extensions; a field or enum value resolves to its parent. */
  fileContainingSymbol(symbol: string): DescFile | undefined {
    const direct = this.symbols.get(symbol);
    if (direct) return direct;
    const dot = symbol.lastIndexOf(".");
    return dot > 0 ? this.symbols.get(symbol.slice(0, dot)) : undefined;
  }

  extensionsOf(typeName: string): DescExtension[] {
    return this.extensions.filter((x) => x.extendee.typeName === typeName);
  }

  /** The file first, then its transitive dependencies, each serialized once. */
  serializedWithDependencies(file: DescFile): Uint8Array[] {
    const out: Uint8Array[] = [];
    const seen = new Set<string>();
    const visit = (f: DescFile) => {
      if (seen.has(f.proto.name)) return;
      seen.add(f.proto.name);
      out.push(toBinary(FileDescriptorProtoSchema, create(FileDescriptorProtoSchema, f.proto)));
      f.dependencies.forEach(visit);
    };
    visit(file);
    return out;
  }
}

type Request = v1.ServerReflectionRequest;
/** Init shapes carry no type names, so one answer serves both protocol versions. */
type ResponseBody = MessageInitShape<typeof v1.ServerReflectionResponseSchema>["messageResponse"];

function notFound(message: string): ResponseBody {
  return { case: "errorResponse", value: { errorCode: Code.NotFound, errorMessage: message } };
}

/** Answers one reflection request (shared by v1 and v1alpha: their messages are identical). */
export function answer(index: DescriptorIndex, request: Request["messageRequest"]): ResponseBody {
  const files = (file: DescFile | undefined, what: string): ResponseBody =>
    file
      ? {
          case: "fileDescriptorResponse",
          value: {
            fileDescriptorProto: index.serializedWithDependencies(file),
          },
        }
      : notFound(`${what} not found`);
  switch (request.case) {
    case "listServices":
      return {
        case: "listServicesResponse",
        value: {
          service: index.serviceNames.map((name) => ({ name })),
        },
      };
    case "fileByFilename":
      return files(index.fileByName(request.value), `file ${JSON.stringify(request.value)}`);
    case "fileContainingSymbol":
      return files(index.fileContainingSymbol(request.value), `symbol ${JSON.stringify(request.value)}`);
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = request.value;
      const ext = index.extensionsOf(containingType).find((x) => x.number === extensionNumber);
      return files(ext?.file, `extension ${extensionNumber} of ${JSON.stringify(containingType)}`);
    }
    case "allExtensionNumbersOfType": {
      if (!index.fileContainingSymbol(request.value))
        return notFound(`type ${JSON.stringify(request.value)} not found`);
      return {
        case: "allExtensionNumbersResponse",
        value: {
          baseTypeName: request.value,
          extensionNumber: index.extensionsOf(request.value).map((x) => x.number),
        },
      };
    }
    default:
      return {
        case: "errorResponse",
        value: {
          errorCode: Code.InvalidArgument,
          errorMessage:
            "reflection request names no question (set one of file_by_filename, list_services, ...)",
        },
      };
  }
}

/**
 * Mounts reflection v1 and v1alpha on `router`, describing `services` (the reflection services
 * themselves are listed too, as gRPC servers do).
 */
export function registerReflection(router: ConnectRouter, services: readonly DescService[]): void {
  const index = new DescriptorIndex([...services, v1.ServerReflection, v1alpha.ServerReflection]);
  router.service(v1.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        yield {
          validHost: req.host,
          originalRequest: req,
          messageResponse: answer(index, req.messageRequest),
        };
      }
    },
  });
  router.service(v1alpha.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        // v1alpha messages have the same fields; only their type names differ.
        const body = answer(index, req.messageRequest as Request["messageRequest"]);
        yield {
          validHost: req.host,
          originalRequest: req,
          messageResponse: body as MessageInitShape<
            typeof v1alpha.ServerReflectionResponseSchema
          >["messageResponse"],
        };
      }
    },
  });
}
