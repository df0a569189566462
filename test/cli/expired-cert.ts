/**
 * A client certificate signed by the test CA whose validity ended in the past — `openssl x509`
 * cannot back-date, `openssl ca` can (-startdate/-enddate).
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { CertPair, Pki } from "../fixtures/pki.js";

export function expiredClientCert(pki: Pki, cn: string): CertPair {
  const dir = join(pki.dir, `expired-${cn}`);
  mkdirSync(dir, { recursive: true });
  const run = (args: string[]) =>
    execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  writeFileSync(join(dir, "index.txt"), "");
  writeFileSync(join(dir, "serial"), "1000\n");
  writeFileSync(
    join(dir, "ca.cnf"),
    [
      "[ca]",
      "default_ca = d",
      "[d]",
      "database = index.txt",
      "new_certs_dir = .",
      "serial = serial",
      "default_md = sha256",
      "policy = p",
      "x509_extensions = e",
      "[p]",
      "commonName = supplied",
      "[e]",
      "extendedKeyUsage = clientAuth",
      "",
    ].join("\n"),
  );
  const key = join(dir, "client.key");
  const cert = join(dir, "client.pem");
  run(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key]);
  run(["req", "-new", "-key", key, "-subj", `/CN=${cn}`, "-out", "client.csr"]);
  run(
    ["ca", "-batch", "-config", "ca.cnf", "-cert", pki.ca, "-keyfile", pki.caKey, "-in", "client.csr"].concat(
      ["-out", cert, "-notext", "-startdate", "20200101000000Z", "-enddate", "20200102000000Z"],
    ),
  );
  return { cert, key };
}
