/**
 * Keeps the lib stub honest: when NIXPKGS_LIB names a nixpkgs `lib` directory (e.g. a checkout's
 * `lib/`, or nix-community/nixpkgs.lib's), every configuration below is evaluated with both the
 * stub and the real module system, and the results must be identical. Without it the suite is
 * skipped: CI cannot fetch nixpkgs.
 *
 *   NIXPKGS_LIB=/path/to/nixpkgs/lib node --import tsx --test test/nix/real-lib.test.ts
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { evalModules, type ModuleEvalOptions, NixEvalError } from "./nix-eval.js";

const LIB_DIR = process.env["NIXPKGS_LIB"];
const realLib = LIB_DIR ? `import ${join(LIB_DIR, "default.nix")}` : undefined;
const skip = !LIB_DIR
  ? "NIXPKGS_LIB is not set (no nixpkgs here)"
  : !existsSync(join(LIB_DIR, "default.nix"))
    ? `NIXPKGS_LIB=${LIB_DIR} has no default.nix`
    : false;

const agent = (body: string) =>
  `{ networking.hostName = "web-01"; services.nixfleet-agent = { enable = true; ${body} }; }`;
const cp = (body: string) => `{ services.nixfleet-control-plane = { enable = true; ${body} }; }`;
const TLS = `tls = { cert = "/s/cp.pem"; key = "/s/cp.key"; clientCa = "/s/ca.pem"; };`;

const CASES: [string, ModuleEvalOptions][] = [
  [
    "documented example",
    {
      modules: [
        agent(`controlPlaneUrl = "https://fleet.example.com"; tags = ["web" "prod" "eu-west"];
          healthChecks = {
            systemd = [{ units = ["nginx.service" "postgresql.service"]; }];
            http = [{ url = "http://localhost:8080/health"; expectedStatus = 200; timeout = 3; interval = 5; }];
            command = [{ name = "disk-space"; command = "test $(df --output=pcent / | tail -1 | tr -d '% ') -lt 90"; timeout = 5; interval = 10; }];
          };
          metricsPort = 9101; metricsOpenFirewall = true;`),
      ],
    },
  ],
  [
    "mTLS",
    {
      modules: [
        agent(
          `controlPlaneUrl = "https://cp"; tls = { caCert = "/ca"; clientCert = "/c"; clientKey = "/k"; };`,
        ),
      ],
    },
  ],
  [
    "insecure",
    { modules: [agent(`controlPlaneUrl = "http://cp"; allowInsecure = true; activation = "direct";`)] },
  ],
  ["bad combination", { modules: [agent(`controlPlaneUrl = "http://cp"; tls.clientCert = "/c";`)] }],
  ["impermanence", { modules: [agent(`controlPlaneUrl = "https://cp";`)], impermanence: true }],
  [
    "control plane",
    { modules: [cp(`${TLS} listen = "[::]:443"; openFirewall = true; extraFlags = [ "a b" "1%" ];`)] },
  ],
  ["control plane insecure", { modules: [cp(`allowInsecure = true; metrics.listen = "127.0.0.1:9102";`)] }],
  ["both via the flake", { modules: [agent(`controlPlaneUrl = "https://cp";`), cp(TLS)], viaFlake: true }],
];

const ATTRS = [
  "agent",
  "controlPlane",
  "assertions",
  "warnings",
  "firewall",
  "persistence",
  "services",
  "users",
];

describe("the lib stub agrees with nixpkgs' lib", { skip }, () => {
  for (const [name, options] of CASES) {
    it(name, async () => {
      for (const attr of ATTRS) {
        const stub = await evalModules(attr, options);
        const real = await evalModules(attr, { ...options, lib: realLib! });
        assert.deepEqual(stub, real, `${name}: ${attr}`);
      }
    });
  }

  it("both refuse a misspelt option and a bad type", async () => {
    for (const body of [
      `controlPlaneUrl = "https://cp"; pollIntervall = 1;`,
      `controlPlaneUrl = "https://cp"; tags = [ "a b" ];`,
    ]) {
      for (const lib of [undefined, realLib]) {
        await assert.rejects(
          evalModules("agent", { modules: [agent(body)], ...(lib ? { lib } : {}) }),
          (e: Error) => e instanceof NixEvalError,
        );
      }
    }
  });
});
