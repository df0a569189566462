import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { answer, DescriptorIndex, registerReflection } from "../../src/control-plane/reflection.js";
import { AgentService } from "../../src/gen/nixfleet/v1/agent_pb.js";
import { FleetService } from "../../src/gen/nixfleet/v1/fleet_pb.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

const run = promisify(execFile);
const BUF = join(import.meta.dirname, "../../node_modules/.bin/buf");
const STORE_PATH = "/nix/store/0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0fj-nixos-system-web-01";

describe("gRPC reflection over a real TLS socket", () => {
  let pki: Pki;
  let server: http2.Http2SecureServer;
  let url: string;
  let tls: string[];
  const dir = makeTempDir();

  before(() => {
    pki = createPki(join(dir, "pki"));
    const client = pki.client("web-01");
    tls = ["--cacert", pki.ca, "--cert", client.cert, "--key", client.key];
    const routes = (router: ConnectRouter) => {
      // Just enough of AgentService for a reflected call: the thing under test is reflection.
      router.service(AgentService, {
        getDesiredGeneration: (req) => ({
          generation: { hash: STORE_PATH, cacheUrl: `echo:${req.machineId}` },
        }),
      });
      registerReflection(router, [AgentService, FleetService]);
    };
    server = http2.createSecureServer(
      {
        cert: readFileSync(pki.server.cert),
        key: readFileSync(pki.server.key),
        ca: readFileSync(pki.ca),
        requestCert: true,
        rejectUnauthorized: true,
        allowHTTP1: true,
      },
      connectNodeAdapter({ routes }),
    );
    return new Promise<void>((resolve) =>
      server.listen(0, "127.0.0.1", () => {
        url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
        resolve();
      }),
    );
  });

  after(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    removeTempDir(dir);
  });

  it("buf curl lists the methods of both services via reflection v1", async () => {
    const { stdout } = await run(BUF, ["curl", ...tls, "--list-methods", url]);
    const methods = stdout.trim().split("\n");
    for (const m of [
      "nixfleet.v1.AgentService/GetDesiredGeneration",
      "nixfleet.v1.AgentService/Report",
      "nixfleet.v1.AgentService/ReportHealth",
      "nixfleet.v1.AgentService/Session",
      "nixfleet.v1.AgentService/Watch",
      "nixfleet.v1.FleetService/CreateRollout",
      "nixfleet.v1.FleetService/WatchRollout",
      "nixfleet.v1.FleetService/GetFleetStatus",
      "nixfleet.v1.FleetService/CreateApiKey",
    ]) {
      assert.ok(methods.includes(m), `${m} missing from:\n${stdout}`);
    }
  });

  it("buf curl lists services via the older v1alpha protocol too", async () => {
    const { stdout } = await run(BUF, [
      "curl",
      ...tls,
      "--reflect-protocol",
      "grpc-v1alpha",
      "--list-services",
      url,
    ]);
    const services = stdout.trim().split("\n");
    assert.ok(services.includes("nixfleet.v1.AgentService"), stdout);
    assert.ok(services.includes("nixfleet.v1.FleetService"), stdout);
    assert.ok(services.includes("grpc.reflection.v1.ServerReflection"), stdout);
  });

  for (const protocol of ["grpc", "connect", "grpcweb"]) {
    it(`buf curl makes a reflected ${protocol} call without proto files`, async () => {
      const { stdout } = await run(BUF, [
        "curl",
        ...tls,
        "--protocol",
        protocol,
        "--data",
        '{"machineId":"web-01"}',
        `${url}/nixfleet.v1.AgentService/GetDesiredGeneration`,
      ]);
      assert.deepEqual(JSON.parse(stdout), { generation: { hash: STORE_PATH, cacheUrl: "echo:web-01" } });
    });
  }

  it("a client without a certificate is refused at the handshake", async () => {
    await assert.rejects(run(BUF, ["curl", "--cacert", pki.ca, "--list-services", url]));
  });
});

describe("reflection answers", () => {
  const index = new DescriptorIndex([AgentService, FleetService]);

  it("returns a file with its transitive dependencies, requested file first", () => {
    const body = answer(index, { case: "fileContainingSymbol", value: "nixfleet.v1.AgentService" });
    assert.equal(body?.case, "fileDescriptorResponse");
    const names = (body!.value as { fileDescriptorProto: Uint8Array[] }).fileDescriptorProto.map(
      (b) => fromBinary(FileDescriptorProtoSchema, b).name,
    );
    assert.deepEqual(names, [
      "nixfleet/v1/agent.proto",
      "google/protobuf/timestamp.proto",
      "nixfleet/v1/types.proto",
    ]);
  });

  it("resolves methods, nested symbols, fields and enum types to their file", () => {
    for (const [symbol, file] of [
      ["nixfleet.v1.FleetService.CreateRollout", "nixfleet/v1/fleet.proto"],
      ["nixfleet.v1.Machine.machine_id", "nixfleet/v1/fleet.proto"],
      ["nixfleet.v1.Outcome", "nixfleet/v1/types.proto"],
      ["google.protobuf.Timestamp", "google/protobuf/timestamp.proto"],
    ] as const) {
      const body = answer(index, { case: "fileContainingSymbol", value: symbol });
      const first = (body!.value as { fileDescriptorProto: Uint8Array[] }).fileDescriptorProto[0]!;
      assert.equal(fromBinary(FileDescriptorProtoSchema, first).name, file, symbol);
    }
  });

  it("answers NOT_FOUND for unknown files, symbols and extensions", () => {
    for (const req of [
      { case: "fileByFilename", value: "nope.proto" },
      { case: "fileContainingSymbol", value: "nixfleet.v1.Nope" },
      { case: "allExtensionNumbersOfType", value: "nixfleet.v1.Nope" },
      {
        case: "fileContainingExtension",
        value: { containingType: "nixfleet.v1.Machine", extensionNumber: 100 },
      },
    ] as const) {
      const body = answer(index, req as never);
      assert.equal(body?.case, "errorResponse", req.case);
      assert.equal((body!.value as { errorCode: number }).errorCode, 5, req.case);
    }
  });

  it("answers INVALID_ARGUMENT for an empty request and lists no extensions for a known type", () => {
    const empty = answer(index, { case: undefined });
    assert.equal((empty!.value as { errorCode: number }).errorCode, 3);
    const ext = answer(index, { case: "allExtensionNumbersOfType", value: "nixfleet.v1.Machine" });
    assert.equal(ext?.case, "allExtensionNumbersResponse");
    assert.deepEqual((ext!.value as { extensionNumber: number[] }).extensionNumber, []);
  });
});
