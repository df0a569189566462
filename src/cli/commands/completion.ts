/**
 * `nixfleet completion bash|zsh|fish`: shell completion generated from the command tree itself
 * (commands, subcommands, options and their help), so it never drifts from what the CLI accepts.
 */
import type { Command, Option } from "commander";
import { UsageError } from "../errors.js";
import { runAction } from "../run.js";

interface Node {
  /** Command words from the root, e.g. ["rollout", "start"]. */
  path: string[];
  cmd: Command;
}

function nodes(root: Command): Node[] {
  const out: Node[] = [];
  const walk = (cmd: Command, path: string[]) => {
    out.push({ path, cmd });
    for (const sub of cmd.commands) walk(sub, [...path, sub.name()]);
  };
  walk(root, []);
  return out;
}

function longFlags(options: readonly Option[]): string[] {
  return options.flatMap((o) => [o.long, o.short].filter((f): f is string => Boolean(f)));
}

/** bash: one `case` over the command words typed so far; option values are skipped by name. */
export function bashCompletion(root: Command): string {
  const name = root.name();
  const globals = longFlags(root.options);
  const all = nodes(root);
  const known = all.filter((n) => n.path.length > 0).map((n) => `" ${n.path.join(" ")}"`);
  const cases = all.map((n) => {
    const words = [
      ...n.cmd.commands.map((c) => c.name()),
      ...(n.path.length ? longFlags(n.cmd.options) : []),
      ...globals,
      "--help",
    ];
    return `    "${n.path.map((p) => ` ${p}`).join("")}") words="${[...new Set(words)].join(" ")}" ;;`;
  });
  return `# ${name} completion for bash. Load it with:  source <(${name} completion bash)
_${name}_complete() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" path="" w i
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    case "$path $w" in
      ${known.join("|")}) path="$path $w" ;;
    esac
  done
  local words=""
  case "$path" in
${cases.join("\n")}
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o default -F _${name}_complete ${name}
`;
}

/** zsh: the bash function through zsh's bashcompinit (shipped with zsh). */
export function zshCompletion(root: Command): string {
  const name = root.name();
  return `#compdef ${name}
# ${name} completion for zsh. Load it with:  source <(${name} completion zsh)
# bashcompinit registers through compdef, which compinit defines (a .zshrc usually ran it).
(( $+functions[compdef] )) || { autoload -U +X compinit && compinit -u }
autoload -U +X bashcompinit && bashcompinit
${bashCompletion(root)}`;
}

const fishQuote = (s: string) => `'${s.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;

/** fish: `complete` lines conditioned on the subcommands seen. */
export function fishCompletion(root: Command): string {
  const name = root.name();
  const lines = [`# ${name} completion for fish. Load it with:  ${name} completion fish | source`];
  lines.push(`complete -c ${name} -f`);
  const optionLine = (cond: string, o: Option) =>
    [
      `complete -c ${name}`,
      cond ? `-n ${fishQuote(cond)}` : "",
      o.long ? `-l ${o.long.replace(/^--/, "")}` : "",
      o.short ? `-s ${o.short.replace(/^-/, "")}` : "",
      o.required || o.optional ? "-r" : "",
      `-d ${fishQuote(o.description)}`,
    ]
      .filter(Boolean)
      .join(" ");
  for (const o of root.options) lines.push(optionLine("", o));
  for (const { path, cmd } of nodes(root)) {
    const seen = path.map((p) => `__fish_seen_subcommand_from ${p}`).join("; and ");
    const subs = cmd.commands.map((c) => c.name());
    const here =
      path.length === 0
        ? "__fish_use_subcommand"
        : `${seen}; and not __fish_seen_subcommand_from ${subs.join(" ")}`;
    for (const sub of cmd.commands)
      lines.push(
        `complete -c ${name} -n ${fishQuote(here)} -a ${sub.name()} -d ${fishQuote(sub.description())}`,
      );
    if (path.length > 0) for (const o of cmd.options) lines.push(optionLine(seen, o));
  }
  return `${lines.join("\n")}\n`;
}

export const SHELLS = { bash: bashCompletion, zsh: zshCompletion, fish: fishCompletion } as const;

export function registerCompletion(program: Command): void {
  program
    .command("completion <shell>")
    .description(
      "print a shell completion script: bash, zsh or fish (e.g. source <(nixfleet completion bash))",
    )
    .action(
      runAction(async (shell: string) => {
        const generate = SHELLS[shell as keyof typeof SHELLS];
        if (!generate) throw new UsageError(`shell must be bash, zsh or fish; got ${JSON.stringify(shell)}`);
        process.stdout.write(generate(program));
      }),
    );
}
