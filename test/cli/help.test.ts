/** The help text of every command: each option's default said once, never as `(default: [])`. */
import assert from "node:assert/strict";
import { it } from "node:test";
import type { Command } from "commander";
import { buildProgram } from "../../src/cli/main.js";

function* commands(c: Command): Generator<Command> {
  yield c;
  for (const sub of c.commands) yield* commands(sub);
}

it("every option's help states its default at most once, and never an empty list", () => {
  for (const cmd of commands(buildProgram())) {
    const help = cmd.createHelp();
    for (const opt of cmd.options) {
      const text = help.optionDescription(opt);
      const where = `${cmd.name()} ${opt.flags}: ${text}`;
      assert.ok((text.match(/default/gi) ?? []).length <= 1, where);
      assert.doesNotMatch(text, /\(default: \[\]\)/, where);
    }
  }
});
