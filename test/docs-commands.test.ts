// The README and docs/*.md against the code: every `syncbn …` command shown in a
// shell code block parses with the real command tree (cli/program.ts, its actions
// swapped for checks that start nothing), every flag the CLI defines appears in
// docs/cli.md, and every relative link and #anchor points at a file and heading
// that exist. Not a test of what the commands do when run.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { CommanderError, type Command } from "commander";
import { describe, expect, it } from "vitest";
import { buildProgram } from "../cli/program.js";
import { checkLaunchFlags, runSettingsFromFlags, type LaunchFlags, type RunFlags } from "../cli/flags.js";
import { parseNorm } from "../shared/config.js";
import { validateSettings } from "../worker/settings.js";
import { ROOT } from "./helpers.js";

/** README.md and every docs/*.md, as paths relative to the repository. */
function docFiles(): string[] {
  const docs = readdirSync(join(ROOT, "docs")).filter((f) => f.endsWith(".md")).sort();
  return ["README.md", ...docs.map((f) => `docs/${f}`)];
}

interface ShownCommand {
  file: string;
  line: number;
  text: string;
  /** The words after the program name (`syncbn`, `npx syncbn`, `node dist/cli/main.js`). */
  args: string[];
}

const SHELL_LANGS = new Set(["sh", "bash", "shell", "console"]);

/**
 * Shell words and operators of one line: quotes and backslashes as the shell reads
 * them ($VARS stay literal), `#` at a word's start ends the line, and each of
 * && || ; | & is a word of its own.
 */
export function shellWords(line: string): string[] {
  const words: string[] = [];
  let word: string | null = null;
  const push = (): void => {
    if (word !== null) words.push(word);
    word = null;
  };
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === " " || c === "\t") push();
    else if (c === "#" && word === null) break;
    else if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new Error(`unclosed ' in: ${line}`);
      word = (word ?? "") + line.slice(i + 1, end);
      i = end;
    } else if (c === '"') {
      let j = i + 1;
      let s = "";
      for (; j < line.length && line[j] !== '"'; j++) s += line[j] === "\\" && j + 1 < line.length ? line[++j] : line[j];
      if (j >= line.length) throw new Error(`unclosed " in: ${line}`);
      word = (word ?? "") + s;
      i = j;
    } else if (c === "\\" && i + 1 < line.length) word = (word ?? "") + line[++i];
    else if ("&|;".includes(c)) {
      push();
      const two = line.slice(i, i + 2);
      words.push(two === "&&" || two === "||" ? two : c);
      if (two === "&&" || two === "||") i++;
    } else word = (word ?? "") + c;
  }
  push();
  return words;
}

const OPERATORS = new Set(["&&", "||", ";", "|", "&"]);

/** The syncbn invocations among a line's simple commands (after any VAR=value prefixes). */
function syncbnArgs(words: string[]): string[][] {
  const found: string[][] = [];
  let cmd: string[] = [];
  const end = (): void => {
    let w = cmd;
    while (w.length && /^[A-Za-z_][A-Za-z0-9_]*=/.test(w[0]!)) w = w.slice(1);
    if (w[0] === "syncbn") found.push(w.slice(1));
    else if (w[0] === "npx" && w[1] === "syncbn") found.push(w.slice(2));
    else if (w[0] === "node" && w[1] === "dist/cli/main.js") found.push(w.slice(2));
    cmd = [];
  };
  for (const w of words) {
    if (OPERATORS.has(w)) end();
    else cmd.push(w);
  }
  end();
  return found;
}

/** Every syncbn command in the shell code blocks of one Markdown file, with its line number. */
export function shownCommands(file: string, text: string): ShownCommand[] {
  const out: ShownCommand[] = [];
  const lines = text.split("\n");
  let fence: string | null = null;
  for (let i = 0; i < lines.length; i++) {
    const open = /^\s*(```+|~~~+)\s*([\w-]*)/.exec(lines[i]!);
    if (fence === null && open) {
      fence = SHELL_LANGS.has(open[2]!) ? open[1]! : `skip${open[1]!}`;
      continue;
    }
    if (fence !== null && lines[i]!.trim().startsWith(fence.replace(/^skip/, ""))) {
      fence = null;
      continue;
    }
    if (fence === null || fence.startsWith("skip")) continue;
    const first = i;
    let line = lines[i]!.replace(/^\s*\$ /, "");
    while (line.endsWith("\\") && i + 1 < lines.length) line = line.slice(0, -1) + " " + lines[++i]!;
    for (const args of syncbnArgs(shellWords(line))) out.push({ file, line: first + 1, text: line.trim(), args });
  }
  return out;
}

/** Every command of the tree, the root included. */
function allCommands(program: Command): Command[] {
  return [program, ...program.commands.flatMap((c) => allCommands(c))];
}

/**
 * Parses `syncbn ARGS` with the real command tree; each action is replaced by the
 * checks the real one makes before it starts anything that can be made without
 * files (the settings of train and worker, the launch flags, the sweep's modes).
 * Resolves when it parses, rejects with the parser's or the check's message.
 */
async function parseShown(args: string[]): Promise<void> {
  const program = buildProgram();
  for (const c of allCommands(program)) c.configureOutput({ writeOut: () => {}, writeErr: () => {}, outputError: () => {} });
  for (const c of program.commands) {
    c.action(() => {
      const o = c.opts() as RunFlags & LaunchFlags & { norm?: string; norms?: string[]; batch: number; lr: number; seed: number; workers?: number };
      if (c.name() === "train" || c.name() === "sweep") checkLaunchFlags(o);
      if (c.name() === "sweep") for (const n of o.norms ?? []) parseNorm(n);
      if (c.name() === "launch") parseNorm(o.norm!);
      if (c.name() === "train" || c.name() === "worker") {
        // An ONNX model is hashed from its file (conventionsOf), which a document's example does not have.
        if (o.model.endsWith(".onnx")) parseNorm(o.norm!);
        else validateSettings({ ...runSettingsFromFlags(o), norm: o.norm!, batch: o.batch, lr: o.lr, seed: o.seed }, o.workers ?? 4);
      }
    });
  }
  try {
    await program.parseAsync(args, { from: "user" });
  } catch (e) {
    // --help and --version end in a CommanderError with exit code 0: they parsed.
    if (e instanceof CommanderError && e.exitCode === 0) return;
    throw e;
  }
}

const FILES = docFiles();
const SHOWN = FILES.flatMap((f) => shownCommands(f, readFileSync(join(ROOT, f), "utf8")));

describe("the commands the README and docs show", () => {
  it("finds the README's five commands and more in docs/ (the extraction works)", () => {
    const inReadme = new Set(SHOWN.filter((c) => c.file === "README.md").map((c) => c.args[0]));
    for (const cmd of ["train", "sweep", "launch", "coordinator", "worker", "conformance"]) expect(inReadme, `README.md shows no syncbn ${cmd}`).toContain(cmd);
    expect(SHOWN.filter((c) => c.file !== "README.md").length).toBeGreaterThanOrEqual(8);
  });

  it.each(SHOWN.map((c) => [`${c.file}:${c.line}`, c] as const))("%s parses with the real CLI", async (where, c) => {
    await parseShown(c.args).catch((e: Error) => {
      throw new Error(`${where}: \`${c.text}\` does not parse: ${e.message}`);
    });
  });

  it("parses --version as the real CLI does, with package.json's version", async () => {
    const program = buildProgram();
    let out = "";
    program.configureOutput({ writeOut: (s) => (out += s) });
    await expect(program.parseAsync(["--version"], { from: "user" })).rejects.toMatchObject({ exitCode: 0 });
    expect(out.trim()).toBe((JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version);
  });

  it("refuses what the real CLI refuses: an unknown flag, a bad value, an unknown mode, a flag of another command", async () => {
    for (const bad of [
      ["train", "--no-such-flag"],
      ["train", "--lr", "abc"],
      ["train", "--batch", "0"],
      ["train", "--norm", "group:3"],
      ["sweep", "--norms", "local,bogus"],
      ["worker", "--threads", "2"],
      ["launch", "--norm", "sync"],
      ["frobnicate"],
    ]) {
      await expect(parseShown(bad), bad.join(" ")).rejects.toThrow();
    }
  });

  it("reads commands out of shell blocks only, through quotes, comments, continuations and &&", () => {
    const md = [
      "```sh",
      'SYNCBN_KERNELS=js npx syncbn train --token "a b" --lr 0.1   # comment --bogus',
      "npm ci && node dist/cli/main.js sweep \\",
      "  --batches 1,2 &",
      "```",
      "```",
      "syncbn train failed:",
      "```",
      "```python",
      "syncbn launch",
      "```",
    ].join("\n");
    expect(shownCommands("x.md", md)).toEqual([
      { file: "x.md", line: 2, text: 'SYNCBN_KERNELS=js npx syncbn train --token "a b" --lr 0.1   # comment --bogus', args: ["train", "--token", "a b", "--lr", "0.1"] },
      { file: "x.md", line: 3, text: "npm ci && node dist/cli/main.js sweep    --batches 1,2 &", args: ["sweep", "--batches", "1,2"] },
    ]);
  });
});

describe("the flags the CLI defines", () => {
  const cli = readFileSync(join(ROOT, "docs/cli.md"), "utf8") + readFileSync(join(ROOT, "docs/pytorch.md"), "utf8");
  const program = buildProgram();
  const flags = program.commands.flatMap((c) => c.options.filter((o) => !o.hidden).flatMap((o) => [o.long, o.short].filter((f): f is string => Boolean(f)).map((f) => [c.name(), f] as const)));

  it("are at least the ones every run takes (the list is read from the program)", () => {
    expect(flags.map(([, f]) => f)).toEqual(expect.arrayContaining(["--workers", "--norm", "--batch", "--norms", "--join-timeout", "--workers-lang"]));
  });

  it.each(flags.map(([c, f]) => [`${c} ${f}`, f] as const))("%s is documented in docs/cli.md or docs/pytorch.md", (_, flag) => {
    expect(new RegExp(`(?<![\\w-])${flag}(?![\\w-])`).test(cli), `${flag} is not in docs/cli.md or docs/pytorch.md`).toBe(true);
  });
});

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens; repeats get -1, -2, … */
export function headingAnchors(text: string): Set<string> {
  const anchors = new Set<string>();
  let fenced = false;
  for (const line of text.split("\n")) {
    if (/^\s*(```|~~~)/.test(line)) fenced = !fenced;
    const h = fenced ? null : /^#{1,6} (.*)$/.exec(line);
    if (!h) continue;
    const base = h[1]!.trim().toLowerCase().replace(/[^\p{L}\p{N}\- _]/gu, "").replace(/ /g, "-");
    let a = base;
    for (let n = 1; anchors.has(a); n++) a = `${base}-${n}`;
    anchors.add(a);
  }
  return anchors;
}

/** Links outside code: [text](target) and ![alt](target), with their line numbers. */
function links(text: string): { line: number; target: string }[] {
  const out: { line: number; target: string }[] = [];
  let fenced = false;
  text.split("\n").forEach((line, i) => {
    if (/^\s*(```|~~~)/.test(line)) fenced = !fenced;
    if (fenced) return;
    const prose = line.replace(/`[^`]*`/g, "");
    for (const m of prose.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) out.push({ line: i + 1, target: m[1]! });
  });
  return out;
}

describe("the links of the README and docs", () => {
  const all = FILES.flatMap((file) => links(readFileSync(join(ROOT, file), "utf8")).map((l) => ({ file, ...l })));
  const relativeLinks = all.filter((l) => !/^[a-z][a-z0-9+.-]*:/i.test(l.target));

  it("link the README to every page in docs/", () => {
    const readme = new Set(relativeLinks.filter((l) => l.file === "README.md").map((l) => l.target.split("#")[0]));
    for (const page of FILES.filter((f) => f !== "README.md")) expect(readme, `README.md does not link to ${page}`).toContain(page);
  });

  it.each(relativeLinks.map((l) => [`${l.file}:${l.line} → ${l.target}`, l] as const))("%s exists", (where, l) => {
    const [path, anchor] = l.target.split("#") as [string, string | undefined];
    const target = path === "" ? join(ROOT, l.file) : resolve(dirname(join(ROOT, l.file)), decodeURI(path));
    expect(relative(ROOT, target).startsWith(".."), `${where}: points outside the repository`).toBe(false);
    expect(existsSync(target), `${where}: ${relative(ROOT, target)} does not exist`).toBe(true);
    if (anchor !== undefined) {
      expect(statSync(target).isFile() && target.endsWith(".md"), `${where}: an anchor into a file that is not Markdown`).toBe(true);
      expect([...headingAnchors(readFileSync(target, "utf8"))], `${where}: no heading #${anchor} in ${relative(ROOT, target)}`).toContain(anchor);
    }
  });

  it("computes GitHub's anchors (backticks, colons and repeats)", () => {
    expect([...headingAnchors("# A: `--threads` b\n```\n# not a heading\n```\n## `resnet:3` against PyTorch\n## X\n## X\n")]).toEqual(["a---threads-b", "resnet3-against-pytorch", "x", "x-1"]);
  });
});
