/**
 * The two google.rpc error details nixfleet sends (google/rpc/error_details.proto):
 * `BadRequest` — which request fields were wrong and why — and `ErrorInfo` — a stable,
 * machine-readable reason (`INVALID_ARGUMENT`, `NOT_FOUND`, …) in the `nixfleet.dev` domain.
 * Clients in any language decode them from `grpc-status-details-bin` (gRPC) or the `details` of
 * a Connect error, and can act on them without parsing messages.
 *
 * Neither the npm registry's @bufbuild packages nor this repository's proto/ carry googleapis, so
 * the descriptors are declared here, field for field the same as upstream (same names, numbers
 * and types; the fields we never send — FieldViolation.reason and .localized_message — are left
 * out, which the wire format allows).
 */
import { create, createFileRegistry, type DescMessage, type Message } from "@bufbuild/protobuf";
import {
  FileDescriptorProtoSchema,
  FieldDescriptorProto_Label as Label,
  FieldDescriptorProto_Type as Type,
} from "@bufbuild/protobuf/wkt";

const string = (name: string, number: number, jsonName: string) => ({
  name,
  number,
  label: Label.OPTIONAL,
  type: Type.STRING,
  jsonName,
});

const registry = createFileRegistry(
  create(FileDescriptorProtoSchema, {
    name: "google/rpc/error_details.proto",
    package: "google.rpc",
    syntax: "proto3",
    messageType: [
      {
        name: "ErrorInfo",
        field: [
          string("reason", 1, "reason"),
          string("domain", 2, "domain"),
          {
            name: "metadata",
            number: 3,
            label: Label.REPEATED,
            type: Type.MESSAGE,
            typeName: ".google.rpc.ErrorInfo.MetadataEntry",
            jsonName: "metadata",
          },
        ],
        nestedType: [
          {
            name: "MetadataEntry",
            field: [string("key", 1, "key"), string("value", 2, "value")],
            options: { mapEntry: true },
          },
        ],
      },
      {
        name: "BadRequest",
        field: [
          {
            name: "field_violations",
            number: 1,
            label: Label.REPEATED,
            type: Type.MESSAGE,
            typeName: ".google.rpc.BadRequest.FieldViolation",
            jsonName: "fieldViolations",
          },
        ],
        nestedType: [
          {
            name: "FieldViolation",
            field: [string("field", 1, "field"), string("description", 2, "description")],
          },
        ],
      },
    ],
  }),
  () => undefined,
);

function message(typeName: string): DescMessage {
  const desc = registry.getMessage(typeName);
  if (!desc) throw new Error(`${typeName} missing from the error-details registry`);
  return desc;
}

export const ErrorInfoSchema = message("google.rpc.ErrorInfo");
export const BadRequestSchema = message("google.rpc.BadRequest");

/** The domain of every ErrorInfo nixfleet sends. */
export const ERROR_DOMAIN = "nixfleet.dev";

export interface FieldViolation {
  field: string;
  description: string;
}

export interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

/** Something `new ConnectError(…, details)` accepts. */
export interface OutgoingDetail {
  desc: DescMessage;
  value: Record<string, unknown>;
}

export function badRequestDetail(violations: FieldViolation[]): OutgoingDetail {
  return { desc: BadRequestSchema, value: { fieldViolations: violations } };
}

export function errorInfoDetail(reason: string, metadata: Record<string, string> = {}): OutgoingDetail {
  return { desc: ErrorInfoSchema, value: { reason, domain: ERROR_DOMAIN, metadata } };
}

/** The field violations in a received error (via ConnectError.findDetails(BadRequestSchema)). */
export function fieldViolationsOf(details: Message[]): FieldViolation[] {
  return details.flatMap(
    (d) => (d as unknown as { fieldViolations?: FieldViolation[] }).fieldViolations ?? [],
  );
}

export function errorInfoOf(details: Message[]): ErrorInfo | undefined {
  return details[0] as unknown as ErrorInfo | undefined;
}
