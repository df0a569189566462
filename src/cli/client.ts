/** The FleetService client, built from resolved settings. The transport is chosen here only. */
import { type Client, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { loadTlsMaterial, TlsConfigError } from "../common/tls.js";
import { FleetService } from "../gen/nixfleet/v1/fleet_pb.js";
import { UsageError } from "./errors.js";
import type { Settings } from "./settings.js";

export type FleetClient = Client<typeof FleetService>;

export function createTransport(settings: Settings): Transport {
  let tls: ReturnType<typeof loadTlsMaterial>;
  try {
    tls = loadTlsMaterial(
      { ca: settings.caCert, cert: settings.clientCert, key: settings.clientKey },
      { ca: "--ca-cert", cert: "--client-cert", key: "--client-key" },
    );
  } catch (err) {
    if (err instanceof TlsConfigError) throw new UsageError(err.message);
    throw err;
  }
  const bearer: Interceptor = (next) => (req) => {
    if (settings.apiKey) req.header.set("authorization", `Bearer ${settings.apiKey}`);
    return next(req);
  };
  const nodeOptions = settings.controlPlaneUrl.startsWith("https:")
    ? { ...(tls.ca ? { ca: tls.ca } : {}), ...(tls.cert ? { cert: tls.cert, key: tls.key } : {}) }
    : {};
  const common = { baseUrl: settings.controlPlaneUrl, interceptors: [bearer], nodeOptions };
  return settings.protocol === "grpc"
    ? createGrpcTransport(common)
    : createConnectTransport({ ...common, httpVersion: "2" });
}

export function createFleetClient(settings: Settings): FleetClient {
  return createClient(FleetService, createTransport(settings));
}
