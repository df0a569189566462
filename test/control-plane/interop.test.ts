/**
 * Clients that are not ours, against the real nixfleet-control-plane process over mTLS:
 * `buf curl` (gRPC, Connect and gRPC-Web, schema from server reflection), plain `curl` with
 * Connect JSON (POST, and GET for the side-effect-free GetDesiredGeneration), the v0.1 REST
 * routes, and a Python grpcio client generated from our proto at test time.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cpSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { missingPackageReason } from "../../scripts/system-packages.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { storePath } from "./helpers.js";
import { type CpProcess, REPO, runCli, startCp, tlsArgs } from "./process.js";

const exec = promisify(execFile);
const BUF = join(REPO, "node_modules/.bin/buf");
const PYTHON = "/usr/bin/python3";

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

async function sh(cmd: string, args: string[], input?: string): Promise<Result> {
  try {
    const child = exec(cmd, args, { timeout: 60_000, maxBuffer: 16 * 1024 * 1024 });
    if (input !== undefined) {
      child.child.stdin?.end(input);
    }
    const { stdout, stderr } = await child;
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

describe("interop with the real control plane process", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let cp: CpProcess;
  let admin: string;
  let agentTls: string[];
  const G1 = storePath("nixos-system-web-01", 1);
  const G2 = storePath("nixos-system-web-01", 2);

  before(async () => {
    pki = createPki(join(dir, "pki"));
    const db = join(dir, "state.db");
    const created = await runCli([
      "keys",
      "create",
      "--init",
      "--name",
      "admin",
      "--role",
      "admin",
      "--db-path",
      db,
    ]);
    assert.equal(created.code, 0, created.stderr);
    admin = created.stdout.trim();
    assert.match(admin, /^nfk-[0-9a-f]{64}$/, "the secret alone on stdout");
    cp = await startCp(["--listen", "127.0.0.1:0", "--db-path", db, ...tlsArgs(pki), "--log-level", "info"]);
    const web01 = pki.client("web-01");
    agentTls = ["--cacert", pki.ca, "--cert", web01.cert, "--key", web01.key];
  });
  after(async () => {
    await cp?.stop();
    removeTempDir(dir);
  });

  it("logged its real address", () => {
    assert.match(cp.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.notEqual(cp.url, "https://127.0.0.1:0");
  });

  describe("curl", () => {
    it("Connect JSON POST: Report registers the machine", async () => {
      const r = await sh("curl", [
        "-sS",
        "--fail-with-body",
        ...agentTls,
        "-H",
        "content-type: application/json",
        "-d",
        JSON.stringify({
          machineId: "web-01",
          currentGeneration: G1,
          outcome: "OUTCOME_UP_TO_DATE",
          tags: ["web"],
        }),
        `${cp.url}/nixfleet.v1.AgentService/Report`,
      ]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.equal(r.stdout, "{}");
    });

    it("Connect JSON with an API key: SetDesiredGeneration, and errors as Connect JSON", async () => {
      const ok = await sh("curl", [
        "-sS",
        "--cacert",
        pki.ca,
        "-H",
        `authorization: Bearer ${admin}`,
        "-H",
        "content-type: application/json",
        "-d",
        JSON.stringify({ machine_id: "web-01", store_path: G2, cache_url: "https://cache.example.org" }),
        `${cp.url}/nixfleet.v1.FleetService/SetDesiredGeneration`,
      ]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(
        JSON.parse(ok.stdout).machine.desiredGeneration.hash,
        G2,
        `snake_case input accepted: ${ok.stdout}`,
      );
      const denied = await sh("curl", [
        "-sS",
        "-w",
        "\n%{http_code}",
        "--cacert",
        pki.ca,
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
        `${cp.url}/nixfleet.v1.FleetService/ListMachines`,
      ]);
      const [body, status] = denied.stdout.split("\n");
      assert.equal(status, "401");
      assert.equal(JSON.parse(body!).code, "unauthenticated");
    });

    it("Connect GET for GetDesiredGeneration", async () => {
      const message = encodeURIComponent(JSON.stringify({ machineId: "web-01" }));
      const r = await sh("curl", [
        "-sS",
        "--fail-with-body",
        ...agentTls,
        `${cp.url}/nixfleet.v1.AgentService/GetDesiredGeneration?encoding=json&message=${message}`,
      ]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      const body = JSON.parse(r.stdout);
      assert.equal(body.generation.hash, G2);
      assert.equal(body.generation.cacheUrl, "https://cache.example.org");
    });

    it("without a client certificate the agent API is UNAUTHENTICATED; with another machine's, PERMISSION_DENIED", async () => {
      const none = await sh("curl", [
        "-sS",
        "--cacert",
        pki.ca,
        "-H",
        "content-type: application/json",
        "-d",
        '{"machineId":"web-01"}',
        `${cp.url}/nixfleet.v1.AgentService/GetDesiredGeneration`,
      ]);
      assert.equal(JSON.parse(none.stdout).code, "unauthenticated");
      const other = pki.client("web-02");
      const wrong = await sh("curl", [
        "-sS",
        "--cacert",
        pki.ca,
        "--cert",
        other.cert,
        "--key",
        other.key,
        "-H",
        "content-type: application/json",
        "-d",
        '{"machineId":"web-01"}',
        `${cp.url}/nixfleet.v1.AgentService/GetDesiredGeneration`,
      ]);
      assert.equal(JSON.parse(wrong.stdout).code, "permission_denied");
    });

    it("the v0.1 REST routes answer with the original JSON shapes", async () => {
      const get = await sh("curl", [
        "-sS",
        "-w",
        "\n%{http_code}",
        ...agentTls,
        `${cp.url}/api/v1/machines/web-01/desired-generation`,
      ]);
      const [body, status] = get.stdout.split("\n");
      assert.equal(status, "200");
      assert.deepEqual(JSON.parse(body!), {
        hash: G2,
        cache_url: "https://cache.example.org",
        poll_hint: null,
      });
      const report = {
        machine_id: "web-01",
        current_generation: G2,
        success: true,
        message: "health-check",
        timestamp: new Date().toISOString(),
        tags: ["web", "rest"],
        agent_version: "0.1.1",
        uptime_seconds: 12,
        health: {
          all_passed: true,
          timestamp: new Date().toISOString(),
          results: [{ status: "pass", check_name: "sshd", duration_ms: 2 }],
        },
      };
      const post = await sh("curl", [
        "-sS",
        "-w",
        "%{http_code}",
        ...agentTls,
        "-H",
        "content-type: application/json",
        "-d",
        JSON.stringify(report),
        `${cp.url}/api/v1/machines/web-01/report`,
      ]);
      assert.equal(post.stdout, "200");
      const status2 = await sh("curl", [
        "-sS",
        "--cacert",
        pki.ca,
        "-H",
        `authorization: Bearer ${admin}`,
        "-H",
        "content-type: application/json",
        "-d",
        '{"tags":["rest"]}',
        `${cp.url}/nixfleet.v1.FleetService/GetFleetStatus`,
      ]);
      const m = JSON.parse(status2.stdout).machines[0];
      assert.equal(m.machineId, "web-01");
      assert.equal(m.inSync, true);
      assert.equal(m.health.state, "HEALTH_STATE_HEALTHY");
      assert.equal(m.health.generation, G2);
      // A machine with nothing assigned: 404, as v0.1 agents expect.
      const web02 = pki.client("web-02");
      const none = await sh("curl", [
        "-sS",
        "-w",
        "\n%{http_code}",
        "--cacert",
        pki.ca,
        "--cert",
        web02.cert,
        "--key",
        web02.key,
        `${cp.url}/api/v1/machines/web-02/desired-generation`,
      ]);
      assert.equal(none.stdout.split("\n").at(-1), "404");
    });

    it("the REST routes apply the same identity rule and validate input", async () => {
      const code = async (args: string[]) =>
        (await sh("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", ...args])).stdout;
      assert.equal(
        await code(["--cacert", pki.ca, `${cp.url}/api/v1/machines/web-01/desired-generation`]),
        "401",
      );
      assert.equal(await code([...agentTls, `${cp.url}/api/v1/machines/web-02/desired-generation`]), "403");
      assert.equal(
        await code([...agentTls, `${cp.url}/api/v1/machines/${"x".repeat(200)}/desired-generation`]),
        "400",
      );
      assert.equal(
        await code([...agentTls, "-d", "{not json", `${cp.url}/api/v1/machines/web-01/report`]),
        "400",
      );
      assert.equal(
        await code([
          ...agentTls,
          "-d",
          JSON.stringify({ current_generation: "/etc/passwd", success: true, message: "x" }),
          `${cp.url}/api/v1/machines/web-01/report`,
        ]),
        "400",
      );
      assert.equal(
        await code([...agentTls, "-X", "POST", `${cp.url}/api/v1/machines/web-01/desired-generation`]),
        "405",
      );
      const big = join(dir, "big.json");
      writeFileSync(big, JSON.stringify({ message: "x".repeat(2 * 1024 * 1024) }));
      assert.equal(
        await code([
          ...agentTls,
          "-H",
          "content-type: application/json",
          "--data-binary",
          `@${big}`,
          `${cp.url}/api/v1/machines/web-01/report`,
        ]),
        "413",
      );
      assert.equal(await code([...agentTls, `${cp.url}/api/v1/nothing-here`]), "404");
    });

    it("/healthz, /readyz and /metrics", async () => {
      assert.equal((await sh("curl", ["-sS", "--cacert", pki.ca, `${cp.url}/healthz`])).stdout, "ok\n");
      assert.equal((await sh("curl", ["-sS", "--cacert", pki.ca, `${cp.url}/readyz`])).stdout, "ready\n");
      const metrics = (await sh("curl", ["-sS", "--cacert", pki.ca, `${cp.url}/metrics`])).stdout;
      assert.match(metrics, /^nixfleet_fleet_size 1$/m);
    });
  });

  describe("buf curl (schema from server reflection)", () => {
    it("lists the services", async () => {
      const r = await sh(BUF, ["curl", ...agentTls, "--list-services", cp.url]);
      assert.equal(r.code, 0, r.stderr);
      for (const s of [
        "nixfleet.v1.AgentService",
        "nixfleet.v1.FleetService",
        "grpc.reflection.v1.ServerReflection",
      ])
        assert.ok(r.stdout.includes(s), r.stdout);
    });

    for (const protocol of ["grpc", "connect", "grpcweb"]) {
      it(`calls GetDesiredGeneration over ${protocol} with the agent's certificate`, async () => {
        const r = await sh(BUF, [
          "curl",
          ...agentTls,
          "--protocol",
          protocol,
          "--data",
          '{"machineId":"web-01"}',
          `${cp.url}/nixfleet.v1.AgentService/GetDesiredGeneration`,
        ]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(JSON.parse(r.stdout).generation.hash, G2);
      });
    }

    it("calls FleetService with an API key, and reports errors with their code", async () => {
      const ok = await sh(BUF, [
        "curl",
        "--cacert",
        pki.ca,
        "--protocol",
        "grpc",
        "-H",
        `Authorization: Bearer ${admin}`,
        "--data",
        "{}",
        `${cp.url}/nixfleet.v1.FleetService/ListMachines`,
      ]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.deepEqual(
        JSON.parse(ok.stdout).machines.map((m: { machineId: string }) => m.machineId),
        ["web-01"],
      );
      const bad = await sh(BUF, [
        "curl",
        "--cacert",
        pki.ca,
        "--protocol",
        "grpc",
        "--data",
        "{}",
        `${cp.url}/nixfleet.v1.FleetService/ListMachines`,
      ]);
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr + bad.stdout, /unauthenticated/);
    });

    it("streams a Session (bidi over gRPC): Hello in, the current assignment out", async () => {
      const r = await sh(
        BUF,
        [
          "curl",
          ...agentTls,
          "--protocol",
          "grpc",
          "--data",
          "@-",
          `${cp.url}/nixfleet.v1.AgentService/Session`,
        ],
        `${JSON.stringify({ hello: { machineId: "web-01", currentGeneration: G2 } })}\n`,
      );
      assert.equal(r.code, 0, r.stderr);
      const first = JSON.parse(r.stdout.split(/\n(?=\{)/)[0]!);
      assert.equal(first.desiredGenerationChanged.generation.hash, G2);
    });
  });

  // Without Debian's Python gRPC packages (not root, not Debian) this part says what to install.
  const noPython = missingPackageReason("python3-grpc-tools") ?? missingPackageReason("python3-grpcio");
  describe("Python grpcio client generated from proto/", { skip: noPython }, () => {
    let out: string;
    before(async () => {
      out = join(dir, "py");
      mkdirSync(out, { recursive: true });
      // Debian's python3-grpc-tools (1.14) bundles protoc 3.5, which predates proto3 `optional`.
      // Dropping that label from a copy keeps the wire format (same numbers and types); only
      // presence tracking of those two fields differs in the generated Python.
      const protoCopy = join(dir, "proto-py");
      cpSync(join(REPO, "proto/nixfleet"), join(protoCopy, "nixfleet"), { recursive: true });
      for (const f of readdirSync(join(protoCopy, "nixfleet/v1"))) {
        const p = join(protoCopy, "nixfleet/v1", f);
        writeFileSync(p, readFileSync(p, "utf8").replace(/^(\s*)optional /gm, "$1"));
      }
      const { stdout: toolsDir } = await exec(PYTHON, [
        "-c",
        "import grpc_tools, os; print(os.path.dirname(grpc_tools.__file__))",
      ]);
      const r = await sh(PYTHON, [
        "-m",
        "grpc_tools.protoc",
        `-I${protoCopy}`,
        `-I${join(toolsDir.trim(), "_proto")}`,
        `--python_out=${out}`,
        `--grpc_python_out=${out}`,
        "nixfleet/v1/types.proto",
        "nixfleet/v1/agent.proto",
        "nixfleet/v1/fleet.proto",
      ]);
      assert.equal(r.code, 0, r.stderr);
      writeFileSync(
        join(out, "client.py"),
        `
import json, sys
import grpc
from nixfleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc

target, ca, cert, key, machine, api_key = sys.argv[1:7]
read = lambda p: open(p, "rb").read()
creds = grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))
result = {}
with grpc.secure_channel(target, creds) as channel:
    agent = agent_pb2_grpc.AgentServiceStub(channel)
    res = agent.GetDesiredGeneration(agent_pb2.GetDesiredGenerationRequest(machine_id=machine), timeout=20)
    result["hash"] = res.generation.hash
    result["revision"] = res.generation.revision
    try:
        agent.GetDesiredGeneration(agent_pb2.GetDesiredGenerationRequest(machine_id="someone-else"), timeout=20)
    except grpc.RpcError as e:
        result["mismatch"] = e.code().name
    def messages():
        yield agent_pb2.AgentMessage(hello=agent_pb2.Hello(machine_id=machine, current_generation=res.generation.hash, tags=["web", "py"]))
        yield agent_pb2.AgentMessage(ack=agent_pb2.PushAck(revision=res.generation.revision))
    stream = agent.Session(messages(), timeout=20)
    first = next(stream)
    result["session_first"] = first.WhichOneof("message")
    result["session_hash"] = first.desired_generation_changed.generation.hash
    stream.cancel()
    fleet = fleet_pb2_grpc.FleetServiceStub(channel)
    status = fleet.GetFleetStatus(fleet_pb2.GetFleetStatusRequest(), metadata=[("authorization", "Bearer " + api_key)], timeout=20)
    result["fleet"] = [m.machine_id for m in status.machines]
print(json.dumps(result))
`,
      );
    });

    it("GetDesiredGeneration, PERMISSION_DENIED on a foreign id, a Session round trip and a FleetService call over mTLS", async () => {
      const web01 = pki.client("web-01");
      const target = cp.url.replace("https://", "");
      const r = await exec(
        PYTHON,
        [join(out, "client.py"), target, pki.ca, web01.cert, web01.key, "web-01", admin],
        {
          cwd: out,
          env: { ...process.env, PYTHONPATH: out },
          timeout: 60_000,
        },
      );
      const result = JSON.parse(r.stdout.trim());
      assert.equal(result.hash, G2);
      assert.ok(result.revision > 0);
      assert.equal(result.mismatch, "PERMISSION_DENIED");
      assert.equal(result.session_first, "desired_generation_changed");
      assert.equal(result.session_hash, G2);
      assert.deepEqual(result.fleet, ["web-01"]);
    });
  });
});
