/**
 * Names for protobuf enum values the control plane stores and shows. Protobuf enums are open: a
 * newer agent may send a value this control plane was built without (a new outcome, a new
 * health-check kind). Such values are stored as their number and shown as `UNKNOWN(n)`, never
 * refused — refusing them would make the agent drop the report and every rollout gate time out.
 */
import type { DescEnum } from "@bufbuild/protobuf";
import { HealthCheckKindSchema, OutcomeSchema } from "../gen/nixfleet/v1/types_pb.js";

export function isKnownEnumValue(schema: DescEnum, value: number): boolean {
  return schema.values.some((v) => v.number === value);
}

/** "ROLLED_BACK" for a known value (without the enum's prefix), "UNKNOWN(7)" otherwise. */
export function enumValueName(schema: DescEnum, value: number): string {
  const v = schema.values.find((x) => x.number === value);
  return v ? v.localName : `UNKNOWN(${value})`;
}

export const outcomeName = (value: number): string => enumValueName(OutcomeSchema, value);
export const healthCheckKindName = (value: number): string => enumValueName(HealthCheckKindSchema, value);
