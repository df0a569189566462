/**
 * TLS material for all three programs: a CA bundle to trust, and an optional certificate + key
 * pair to present. Everything is read and cross-checked at start-up so a bad file is one clear
 * error naming the option and the path, not a handshake failure minutes later.
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";

export interface TlsPaths {
  /** PEM bundle of CAs to trust (for the peer). */
  ca?: string | undefined;
  /** PEM certificate (chain) to present. */
  cert?: string | undefined;
  /** PEM private key for `cert`. */
  key?: string | undefined;
}

/** Names of the options the paths came from, so errors speak the caller's vocabulary. */
export interface TlsOptionNames {
  ca: string;
  cert: string;
  key: string;
}

export interface TlsMaterial {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  /** The subject CN of the leaf certificate, when a certificate was given. */
  commonName?: string;
  /** When the leaf certificate expires. */
  notAfter?: Date;
}

export class TlsConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TlsConfigError";
  }
}

const DEFAULT_NAMES: TlsOptionNames = { ca: "ca", cert: "cert", key: "key" };

function readPem(option: string, path: string): Buffer {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    const why =
      code === "ENOENT"
        ? "file does not exist"
        : code === "EACCES"
          ? "permission denied"
          : code === "EISDIR"
            ? "is a directory"
            : (err as Error).message;
    throw new TlsConfigError(`${option}: cannot read ${path}: ${why}`);
  }
  if (!data.toString("latin1").includes("-----BEGIN ")) {
    throw new TlsConfigError(`${option}: ${path} is not PEM (no "-----BEGIN" line)`);
  }
  return data;
}

/** Splits a PEM bundle into its certificates. */
export function parseCertificates(option: string, path: string, pem: Buffer): X509Certificate[] {
  const blocks = pem
    .toString("latin1")
    .match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  if (!blocks || blocks.length === 0) throw new TlsConfigError(`${option}: ${path} contains no certificate`);
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new TlsConfigError(
        `${option}: certificate #${i + 1} in ${path} does not parse: ${(err as Error).message}`,
      );
    }
  });
}

/** Reads the subject CN out of a certificate's subject string ("CN=web-01\nO=..."). */
export function commonNameOf(cert: X509Certificate): string | undefined {
  for (const line of cert.subject.split("\n")) {
    if (line.startsWith("CN=")) return line.slice(3);
  }
  return undefined;
}

/**
 * Loads and checks TLS files. Certificate and key must be given together; the key must belong
 * to the certificate; every file must be readable PEM.
 */
export function loadTlsMaterial(paths: TlsPaths, names: TlsOptionNames = DEFAULT_NAMES): TlsMaterial {
  const material: TlsMaterial = {};
  if (Boolean(paths.cert) !== Boolean(paths.key)) {
    const [given, missing] = paths.cert ? [names.cert, names.key] : [names.key, names.cert];
    throw new TlsConfigError(`${given} is set but ${missing} is not: give both or neither`);
  }
  if (paths.ca) {
    material.ca = readPem(names.ca, paths.ca);
    parseCertificates(names.ca, paths.ca, material.ca);
  }
  if (paths.cert && paths.key) {
    material.cert = readPem(names.cert, paths.cert);
    material.key = readPem(names.key, paths.key);
    const [leaf] = parseCertificates(names.cert, paths.cert, material.cert);
    let key: ReturnType<typeof createPrivateKey>;
    try {
      key = createPrivateKey(material.key);
    } catch (err) {
      throw new TlsConfigError(
        `${names.key}: ${paths.key} is not a usable private key: ${(err as Error).message}`,
      );
    }
    if (!leaf!.checkPrivateKey(key)) {
      throw new TlsConfigError(
        `${names.key}: ${paths.key} does not belong to the certificate in ${paths.cert} (${names.cert}); ` +
          "check that the two files come from the same issuance",
      );
    }
    const cn = commonNameOf(leaf!);
    if (cn !== undefined) material.commonName = cn;
    material.notAfter = new Date(leaf!.validTo);
  }
  return material;
}
