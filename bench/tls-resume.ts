/**
 * Server CPU of one agent connection — mTLS handshake, HTTP/2 session setup and one request — with
 * a full handshake against one that resumes a TLS session (src/agent/transport/tls-session.ts),
 * the two interleaved in blocks so both see the same load. The server is the control plane's
 * listener in its own process (bench/tls-resume-server.ts), measured from outside (/proc).
 *
 *   node --import tsx bench/tls-resume.ts [--connections 400] [--blocks 6] [--concurrency 8]
 *
 * Prints a table and one JSON line.
 */
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { loadavg } from "node:os";
import { join } from "node:path";
import type { TLSSocket } from "node:tls";
import { resumingTlsConnector } from "../src/agent/transport/tls-session.js";
import { createPki } from "../test/fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../test/fixtures/tmp.js";
import { child } from "./child.js";
import { cpuMs } from "./proc-stats.js";

const argv = process.argv.slice(2);
const flag = (name: string, fallback: number) => {
  const i = argv.indexOf(name);
  return i >= 0 ? Number(argv[i + 1]) : fallback;
};
const CONNECTIONS = flag("--connections", 400);
const BLOCKS = flag("--blocks", 6);
const CONCURRENCY = flag("--concurrency", 8);

const dir = makeTempDir("nixfleet-tls-resume-");
try {
  const pki = createPki(join(dir, "pki"));
  const server = child("tls-resume-server.ts", [
    JSON.stringify({ cert: pki.server.cert, key: pki.server.key, ca: pki.ca, ticketKeys: join(dir, "keys") }),
  ]);
  const { url, pid } = JSON.parse(await server.waitLine((l) => l.startsWith("{"))) as {
    url: string;
    pid: number;
  };
  const agent = pki.client("bench-agent");
  const tls = { ca: readFileSync(pki.ca), cert: readFileSync(agent.cert), key: readFileSync(agent.key) };
  const resuming = resumingTlsConnector(tls);

  /** One connection up to its first answer; whether it resumed. */
  const once = (resume: boolean) =>
    new Promise<boolean>((resolve, reject) => {
      const connector = resume ? resuming : resumingTlsConnector(tls);
      const session = http2.connect(url, { createConnection: connector.createConnection });
      session.on("error", reject);
      const req = session.request({ ":path": "/" });
      req.on("data", () => {});
      req.on("end", () => {
        const reused = (session.socket as unknown as TLSSocket).isSessionReused();
        session.close();
        resolve(reused);
      });
      req.on("error", reject);
      req.end();
    });

  const block = async (resume: boolean) => {
    let next = 0;
    let reused = 0;
    const cpu0 = cpuMs(pid);
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next++ < CONNECTIONS) if (await once(resume)) reused++;
      }),
    );
    return { usPerConnection: ((cpuMs(pid) - cpu0) * 1000) / CONNECTIONS, reused };
  };

  await block(true); // warm-up, and the first ticket
  const full: number[] = [];
  const resumed: number[] = [];
  let reusedInFull = 0;
  let notReused = 0;
  for (let b = 0; b < BLOCKS; b++) {
    const f = await block(false);
    full.push(f.usPerConnection);
    reusedInFull += f.reused;
    const r = await block(true);
    resumed.push(r.usPerConnection);
    notReused += CONNECTIONS - r.reused;
  }
  server.proc.kill("SIGTERM");
  await server.exited;
  const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
  const minMed = (xs: number[]) =>
    `${Math.round(sorted(xs)[0]!)} / ${Math.round(sorted(xs)[Math.floor(xs.length / 2)]!)}`;
  process.stdout.write(
    `server CPU per connection (mTLS handshake + HTTP/2 session + one request), µs, min / median of ${BLOCKS} blocks of ${CONNECTIONS}:\n` +
      `  full handshake     ${minMed(full)}\n  resumed session    ${minMed(resumed)}\n` +
      `  ratio (median)     ${(sorted(resumed)[Math.floor(BLOCKS / 2)]! / sorted(full)[Math.floor(BLOCKS / 2)]!).toFixed(2)}\n` +
      `  load average       ${loadavg()[0]!.toFixed(1)}\n`,
  );
  process.stdout.write(`${JSON.stringify({ full, resumed, reusedInFull, notReused, load: loadavg()[0] })}\n`);
} finally {
  removeTempDir(dir);
}
