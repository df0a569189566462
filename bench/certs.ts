/**
 * Thousands of client certificates in about a second, for benchmarks and tests that open one
 * mTLS connection per machine (the control plane takes a machine's identity from its
 * certificate's CN, so 10,000 agents need 10,000 certificates).
 *
 * The openssl CLI takes tens of milliseconds per certificate, and no X.509 library is installed,
 * so this issues one template with openssl and re-signs copies of it: every CN has the template's
 * length, so only the CN bytes inside the to-be-signed part change and its DER lengths stay put.
 * All certificates share the template's key (harmless for load generation). The outer DER
 * envelope is rebuilt because ECDSA signatures vary in length.
 */
import { createPrivateKey, sign } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Pki } from "../test/fixtures/pki.js";

export interface MintedCert {
  cn: string;
  /** PEM certificate. */
  cert: string;
}

export interface MintedCerts {
  /** PEM private key shared by every certificate. */
  key: string;
  certs: MintedCert[];
}

/** Reads one DER element at `at`: where its content starts and where the element ends. */
function element(der: Buffer, at: number): { start: number; end: number } {
  let len = der[at + 1]!;
  let start = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[at + 2 + i]!;
    start += n;
  }
  return { start, end: start + len };
}

function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  if (n < 0x100) return Buffer.from([0x81, n]);
  return Buffer.from([0x82, n >> 8, n & 0xff]);
}

function tlv(tag: number, content: Buffer): Buffer {
  return Buffer.concat([Buffer.from([tag]), derLength(content.length), content]);
}

/** Certificates for `${prefix}${index padded to width}`, 0 ≤ index < count, signed by the pki's CA. */
export function mintClientCerts(pki: Pki, prefix: string, count: number, width = 5): MintedCerts {
  const name = (i: number) => `${prefix}${String(i).padStart(width, "0")}`;
  const template = pki.client(name(0));
  const pem = readFileSync(template.cert, "utf8");
  const der = Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ""), "base64");
  const outer = element(der, 0);
  const tbs = element(der, outer.start);
  const tbsBytes = der.subarray(outer.start, tbs.end);
  const sigAlg = element(der, tbs.end);
  const sigAlgBytes = der.subarray(tbs.end, sigAlg.end);
  const cnAt = tbsBytes.indexOf(Buffer.from(name(0)));
  // The CN also appears nowhere else in a client certificate of ours; check it is unique anyway.
  if (cnAt < 0 || tbsBytes.indexOf(Buffer.from(name(0)), cnAt + 1) >= 0)
    throw new Error(`the template certificate's CN ${name(0)} is not found exactly once`);
  const caKey = createPrivateKey(readFileSync(pki.caKey));
  const certs: MintedCert[] = [];
  for (let i = 0; i < count; i++) {
    const cn = name(i);
    const body = Buffer.from(tbsBytes);
    body.write(cn, cnAt, "ascii");
    const signature = sign("sha256", body, caKey);
    const cert = tlv(
      0x30,
      Buffer.concat([body, sigAlgBytes, tlv(0x03, Buffer.concat([Buffer.from([0]), signature]))]),
    );
    const b64 = cert.toString("base64").replace(/.{64}/g, "$&\n");
    certs.push({ cn, cert: `-----BEGIN CERTIFICATE-----\n${b64.trimEnd()}\n-----END CERTIFICATE-----\n` });
  }
  return { key: readFileSync(template.key, "utf8"), certs };
}
