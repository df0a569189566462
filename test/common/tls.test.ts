import assert from "node:assert/strict";
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { loadTlsMaterial, TlsConfigError } from "../../src/common/tls.js";
import { createPki, type Pki } from "../fixtures/pki.js";
import { makeTempDir, removeTempDir } from "../fixtures/tmp.js";

describe("TLS material loading", () => {
  const dir = makeTempDir();
  let pki: Pki;
  const names = { ca: "tls.caCert", cert: "tls.clientCert", key: "tls.clientKey" };
  before(() => {
    pki = createPki(join(dir, "pki"));
  });
  after(() => removeTempDir(dir));

  it("loads CA, certificate and key and reads the CN and expiry", () => {
    const web = pki.client("web-01");
    const m = loadTlsMaterial({ ca: pki.ca, cert: web.cert, key: web.key });
    assert.ok(m.ca && m.cert && m.key);
    assert.equal(m.commonName, "web-01");
    assert.ok(m.notAfter && m.notAfter.getTime() > Date.now());
  });

  it("accepts nothing at all, or only a CA", () => {
    assert.deepEqual(loadTlsMaterial({}), {});
    const onlyCa = loadTlsMaterial({ ca: pki.ca });
    assert.ok(onlyCa.ca);
    assert.equal(onlyCa.cert, undefined);
  });

  it("refuses a certificate without a key and a key without a certificate, naming both options", () => {
    const web = pki.client("web-01");
    assert.throws(
      () => loadTlsMaterial({ cert: web.cert }, names),
      (e: Error) =>
        e instanceof TlsConfigError && /tls.clientCert is set but tls.clientKey is not/.test(e.message),
    );
    assert.throws(
      () => loadTlsMaterial({ key: web.key }, names),
      /tls.clientKey is set but tls.clientCert is not/,
    );
  });

  it("names the option and path of a missing or unreadable file", () => {
    const web = pki.client("web-01");
    const missing = join(dir, "nope.pem");
    assert.throws(
      () => loadTlsMaterial({ ca: missing }, names),
      new RegExp(`tls.caCert: cannot read ${missing}: file does not exist`),
    );
    assert.throws(() => loadTlsMaterial({ ca: dir }, names), /tls.caCert: cannot read .*: is a directory/);
    if (process.getuid?.() !== 0) {
      const locked = join(dir, "locked.key");
      writeFileSync(locked, "x");
      chmodSync(locked, 0);
      assert.throws(() => loadTlsMaterial({ cert: web.cert, key: locked }, names), /permission denied/);
    }
  });

  it("refuses files that are not PEM or hold no certificate", () => {
    const junk = join(dir, "junk.pem");
    writeFileSync(junk, "hello\n");
    assert.throws(() => loadTlsMaterial({ ca: junk }, names), /tls.caCert: .*junk.pem is not PEM/);
    const web = pki.client("web-01");
    // A key file where the CA bundle should be: PEM, but no certificate in it.
    assert.throws(() => loadTlsMaterial({ ca: web.key }, names), /tls.caCert: .* contains no certificate/);
    const broken = join(dir, "broken.pem");
    writeFileSync(broken, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    assert.throws(
      () => loadTlsMaterial({ ca: broken }, names),
      /certificate #1 in .*broken.pem does not parse/,
    );
  });

  it("refuses a key that does not belong to the certificate", () => {
    const a = pki.client("web-01");
    const b = pki.client("web-02");
    assert.throws(
      () => loadTlsMaterial({ cert: a.cert, key: b.key }, names),
      /tls.clientKey: .*client-web-02.key does not belong to the certificate in .*client-web-01.pem/,
    );
  });

  it("refuses a key file that is not a key", () => {
    const a = pki.client("web-01");
    mkdirSync(join(dir, "k"), { recursive: true });
    const notKey = join(dir, "k", "cert-as-key.pem");
    writeFileSync(notKey, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    assert.throws(
      () => loadTlsMaterial({ cert: a.cert, key: notKey }, names),
      /tls.clientKey: .* is not a usable private key/,
    );
  });
});
