/**
 * What operators and foreign clients see when something is wrong, against the real control-plane
 * process over TLS: google.rpc error details arriving in `buf curl` (decoded by protoc, not by
 * our code) and printed by the CLI; the CLI's words for a plain-HTTP URL to a TLS port, a URL
 * with a path, an expired client certificate; the control plane's words for an agent's expired
 * certificate; and docs/api.md's examples run as written.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { DEBIAN_PYTHON, missingPackageReason } from "../../scripts/system-packages.js";
import { expiredClientCert } from "../cli/expired-cert.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { programArgs } from "../fixtures/programs.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";
import { type CpProcess, REPO, runCli, startCp, tlsArgs } from "./process.js";

const BUF = join(REPO, "node_modules/.bin/buf");
const HASH = "0c8vxs2ja1k5f5v0r4zm0h4y3hs7a0f0";

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function sh(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<Result> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      { timeout: 120_000, maxBuffer: 16 << 20, cwd: opts.cwd ?? REPO, env: opts.env ?? process.env },
      (err, stdout, stderr) =>
        resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** The first ```sh block of docs/api.md that contains `marker`. */
function apiDocBlock(marker: string): string {
  const blocks = [...readFileSync(join(REPO, "docs/api.md"), "utf8").matchAll(/```sh\n([\s\S]*?)```/g)].map(
    (m) => m[1]!,
  );
  const block = blocks.find((b) => b.includes(marker));
  assert.ok(block, `docs/api.md has a sh block with ${marker}`);
  return block;
}

describe("errors operators and foreign clients can act on", () => {
  const dir = makeTempDir();
  let pki: Pki;
  let cp: CpProcess;
  let admin: string;

  const nixfleet = (args: string[], env: Record<string, string> = {}) =>
    sh(process.execPath, [...programArgs("cli"), ...args], {
      env: {
        ...process.env,
        NIXFLEET_API_KEY: admin,
        NIXFLEET_CA_CERT: pki.ca,
        NIXFLEET_CONTROL_PLANE_URL: cp.url,
        ...env,
      },
    });

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
    cp = await startCp(["--listen", "127.0.0.1:0", "--db-path", db, ...tlsArgs(pki)]);
  });
  after(async () => {
    await cp?.stop();
    removeTempDir(dir);
  });

  const badRollout = JSON.stringify({ releaseId: "nope", target: { tags: ["web"] } });

  it("INVALID_ARGUMENT carries google.rpc.BadRequest and ErrorInfo: buf curl over gRPC, decoded by protoc", {
    skip: missingPackageReason("python3-grpc-tools"),
  }, async () => {
    const r = await sh(BUF, [
      "curl",
      "--protocol",
      "grpc",
      "--cacert",
      pki.ca,
      "-H",
      `Authorization: Bearer ${admin}`,
      "--data",
      badRollout,
      `${cp.url}/nixfleet.v1.FleetService/CreateRollout`,
    ]);
    assert.notEqual(r.code, 0);
    const error = JSON.parse(r.stderr.slice(r.stderr.indexOf("{"))) as {
      code: string;
      details: { type: string; value: string }[];
    };
    assert.equal(error.code, "invalid_argument");
    const byType = new Map(error.details.map((d) => [d.type, d.value]));
    assert.deepEqual([...byType.keys()].sort(), ["google.rpc.BadRequest", "google.rpc.ErrorInfo"]);
    const decode = async (b64: string) => {
      const raw = Buffer.from(b64, "base64");
      const p = execFile(DEBIAN_PYTHON, ["-m", "grpc_tools.protoc", "--decode_raw"]);
      let out = "";
      p.stdout!.on("data", (d) => (out += d));
      p.stdin!.end(raw);
      await new Promise((res) => p.on("exit", res));
      return out;
    };
    // BadRequest{field_violations(1): [{field(1), description(2)}]}
    assert.match(await decode(byType.get("google.rpc.BadRequest")!), /1 \{\s*1: "release_id"\s*2: ".+"/);
    // ErrorInfo{reason(1), domain(2), metadata(3)}
    const info = await decode(byType.get("google.rpc.ErrorInfo")!);
    assert.match(info, /1: "INVALID_FIELD"/);
    assert.match(info, /2: "nixfleet\.dev"/);
  });

  it("the same details over the Connect protocol with plain curl, and ErrorInfo on NOT_FOUND", async () => {
    const post = (method: string, body: string) =>
      sh("curl", [
        "-sS",
        "--cacert",
        pki.ca,
        "-H",
        `authorization: Bearer ${admin}`,
        "-H",
        "content-type: application/json",
        "-d",
        body,
        `${cp.url}/nixfleet.v1.FleetService/${method}`,
      ]);
    const bad = JSON.parse((await post("CreateRollout", badRollout)).stdout);
    assert.equal(bad.code, "invalid_argument");
    assert.deepEqual(bad.details.map((d: { type: string }) => d.type).sort(), [
      "google.rpc.BadRequest",
      "google.rpc.ErrorInfo",
    ]);
    const missing = JSON.parse((await post("GetMachine", JSON.stringify({ machineId: "nobody" }))).stdout);
    assert.equal(missing.code, "not_found");
    const info = missing.details.find((d: { type: string }) => d.type === "google.rpc.ErrorInfo");
    assert.ok(Buffer.from(info.value, "base64").includes(Buffer.from("NOT_FOUND")));
  });

  it("the CLI prints each field violation the control plane names", async () => {
    const r = await nixfleet(["rollout", "start", "--release", "nope", "--tags", "web"]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^error: invalid request:\n {2}release_id: .+$/m);
  });

  it("http:// to the TLS port: the CLI says it speaks TLS and gives the https:// URL", async () => {
    const http = cp.url.replace(/^https:/, "http:");
    for (const protocol of ["grpc", "connect"]) {
      const r = await nixfleet(["status", "--protocol", protocol], { NIXFLEET_CONTROL_PLANE_URL: http });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /hung up on plain HTTP/, protocol);
      assert.ok(r.stderr.includes(`hint: it probably speaks TLS: use ${cp.url}`), r.stderr);
    }
  });

  it("a URL with a path: the CLI says the URL looks wrong, not to upgrade the control plane", async () => {
    const r = await nixfleet(["status"], { NIXFLEET_CONTROL_PLANE_URL: `${cp.url}/prefix` });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /URL looks wrong/);
    assert.ok(
      r.stderr.includes(`hint: drop "/prefix": the control plane serves its API at the root, e.g. ${cp.url}`),
    );
    assert.doesNotMatch(r.stderr, /upgrade/);
  });

  it("an operator's expired client certificate: the CLI refuses it, exit 2, naming it", async () => {
    const expired = expiredClientCert(pki, "alice");
    const r = await nixfleet(["status", "--client-cert", expired.cert, "--client-key", expired.key]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /^error: --client-cert: the client certificate .* expired on 2020-01-02/m);
  });

  it("an agent's expired certificate: UNAUTHENTICATED saying it expired, not that another CA is needed", async () => {
    const expired = expiredClientCert(pki, "web-09");
    const r = await sh("curl", [
      "-sS",
      "--cacert",
      pki.ca,
      "--cert",
      expired.cert,
      "--key",
      expired.key,
      "-H",
      "content-type: application/json",
      "-d",
      JSON.stringify({ machineId: "web-09" }),
      `${cp.url}/nixfleet.v1.AgentService/GetDesiredGeneration`,
    ]);
    const body = JSON.parse(r.stdout);
    assert.equal(body.code, "unauthenticated");
    assert.match(body.message, /the client certificate \(CN web-09\) expired on .*2020 GMT; renew it/);
    assert.doesNotMatch(body.message, /must be signed by/);
  });

  it("docs/api.md's machine examples run as written (npx buf curl, web-05 through its lifecycle)", async () => {
    const block = apiDocBlock("F RegisterMachine").replaceAll("/nix/store/…-", `/nix/store/${HASH}-`);
    const r = await sh("bash", ["-euo", "pipefail", "-c", block], {
      env: { ...process.env, CP: cp.url, KEY: admin, CA: pki.ca },
    });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /"MACHINE_LIFECYCLE_MAINTENANCE"/);
  });

  it("docs/api.md's Python recipe generates importable stubs with Debian's grpc-tools", {
    skip: missingPackageReason("python3-grpc-tools") ?? missingPackageReason("python3-grpcio"),
  }, async () => {
    const checkout = join(dir, "checkout");
    mkdirSync(checkout, { recursive: true });
    cpSync(join(REPO, "proto"), join(checkout, "proto"), { recursive: true });
    // The recipe says python3: Debian's, where its python3-grpc* packages are.
    const r = await sh("bash", ["-euo", "pipefail", "-c", apiDocBlock("grpc_tools.protoc")], {
      cwd: checkout,
      env: { ...process.env, PATH: `/usr/bin:${process.env["PATH"]}` },
    });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.ok(existsSync(join(checkout, "py/nixfleet/v1/fleet_pb2_grpc.py")));
  });
});
