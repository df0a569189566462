/** The FleetService client, built from resolved settings. The transport is chosen here only. */
import { type Client, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { FailoverTransport } from "../common/failover-transport.js";
import { loadTlsMaterial, TlsConfigError } from "../common/tls.js";
import { FleetService } from "../gen/nixfleet/v1/fleet_pb.js";
import { UsageError } from "./errors.js";
import { type Settings, settingOrigin } from "./settings.js";

export type FleetClient = Client<typeof FleetService>;

export function createTransport(settings: Settings): Transport {
  let tls: ReturnType<typeof loadTlsMaterial>;
  // Errors name the setting as its author wrote it: a flag, a variable, or key and file.
  const certName = settingOrigin(settings, "clientCert");
  try {
    tls = loadTlsMaterial(
      { ca: settings.caCert, cert: settings.clientCert, key: settings.clientKey },
      {
        ca: settingOrigin(settings, "caCert"),
        cert: certName,
        key: settingOrigin(settings, "clientKey"),
      },
    );
  } catch (err) {
    if (err instanceof TlsConfigError) throw new UsageError(err.message);
    throw err;
  }
  // A control plane that only *asks* for client certificates accepts the connection with an
  // expired one and ignores it; the operator would never learn. Say so before connecting.
  if (tls.notAfter && tls.notAfter.getTime() < Date.now()) {
    throw new UsageError(
      `${certName}: the client certificate ${settings.clientCert} expired on ${tls.notAfter.toISOString()}; ` +
        "renew it, or leave out the client certificate and key if the control plane does not require one",
    );
  }
  const bearer: Interceptor = (next) => (req) => {
    if (settings.apiKey) req.header.set("authorization", `Bearer ${settings.apiKey}`);
    return next(req);
  };
  const tlsOptions = {
    ...(tls.ca ? { ca: tls.ca } : {}),
    ...(tls.cert ? { cert: tls.cert, key: tls.key } : {}),
  };
  // One transport per URL, tried in order: a URL that is unreachable or answers UNAVAILABLE
  // passes the call to the next one (src/common/failover-transport.ts).
  const endpoints = settings.controlPlaneUrls.map((baseUrl) => {
    const common = {
      baseUrl,
      interceptors: [bearer],
      nodeOptions: baseUrl.startsWith("https:") ? tlsOptions : {},
    };
    const transport =
      settings.protocol === "grpc"
        ? createGrpcTransport(common)
        : createConnectTransport({ ...common, httpVersion: "2" });
    // Node's shared HTTP/2 sessions close themselves when idle; nothing to close here.
    return { url: baseUrl, transport, close: () => {} };
  });
  return new FailoverTransport(endpoints);
}

export function createFleetClient(settings: Settings): FleetClient {
  return createClient(FleetService, createTransport(settings));
}
