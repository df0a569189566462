/** The docs' commands and quoted messages match what the programs do today. */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { describeError } from "../../src/cli/errors.js";

const REPO = join(import.meta.dirname, "..", "..");
const DOCS = [
  "README.md",
  ...readdirSync(join(REPO, "docs"))
    .filter((f) => f.endsWith(".md"))
    .map((f) => `docs/${f}`),
];

function codeLines(file: string): string[] {
  const blocks = [...readFileSync(join(REPO, file), "utf8").matchAll(/```(?:sh|bash)\n([\s\S]*?)```/g)];
  return blocks.flatMap((m) => m[1]!.split("\n"));
}

it("commands in the docs run buf as `npx buf` (a checkout has it only under node_modules/.bin)", () => {
  for (const file of DOCS) {
    for (const line of codeLines(file)) {
      const command = line.replace(/#.*$/, "");
      assert.doesNotMatch(
        command,
        /(^|[\s;|&({])(?<!npx )buf (curl|lint|generate|breaking)\b/,
        `${file}: ${line}`,
      );
    }
  }
});

it("docs/operations.md quotes the CLI's current words for an untrusted server certificate", () => {
  const { lines } = describeError(
    new ConnectError("self-signed certificate in certificate chain", Code.Internal),
    "https://cp.example:8443",
  );
  const ops = readFileSync(join(REPO, "docs/operations.md"), "utf8");
  assert.ok(ops.includes(`\`${lines[0]}\``), `operations.md quotes: ${lines[0]}`);
  assert.ok(!ops.includes("error: Internal: self-signed"), "not the old text");
});
