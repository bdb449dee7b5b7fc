// The JavaScript and TypeScript sub-kernel of a session (worker/kernels/node.py starts it).
//
// One Node process for the session's life; every call runs in one shared REPL context, so
// state persists. Node's own `repl` evaluator does what a notebook needs: top-level await
// (declarations hoisted out of its async wrapper), the last expression's value as the
// completion, `breakEvalOnSigint` to stop a synchronous loop on SIGINT. Before it, top-level
// `let`/`const`/`class` become `var` declarations, so a call may declare again what an
// earlier one declared (as a notebook re-runs a cell), which V8 refuses for lexical names.
// TypeScript is transpiled per call by esbuild (types erased, enums kept), then the same.
//
// Channels: code arrives on fd 3 as "<byte length>\n<code>" (the language tag rides in the
// first line: "<length> <language>"); events leave on fd 4 as JSON lines: stream, execute_result,
// display_data, error, then one done. console output travels in-band as stream events, so it
// keeps its order with stderr and the rest; a child process started from the code writes to
// fds 1 and 2 directly (the worker's own stdout and stderr pipes).
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const repl = require("node:repl");
const util = require("node:util");
const { PassThrough } = require("node:stream");

const [COMMANDS, EVENTS] = (process.env.TCI_KERNEL_FDS || "3,4").split(",").map(Number);
delete process.env.TCI_KERNEL_FDS;
const DISPLAY = Symbol.for("Jupyter.display");
const NODE_MODULES = process.env.NODE_PATH || "";

function send(event) {
  const line = JSON.stringify(event) + "\n";
  let buffer = Buffer.from(line);
  while (buffer.length) {
    buffer = buffer.subarray(fs.writeSync(EVENTS, buffer));
  }
}

// console.* and process.std*.write go out in-band, in the order they are written.
for (const name of ["stdout", "stderr"]) {
  const stream = process[name];
  stream.write = (chunk, encoding, callback) => {
    if (typeof encoding === "function") callback = encoding;
    const text = typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8");
    if (text) send({ type: "stream", name, text });
    if (typeof callback === "function") process.nextTick(callback);
    return true;
  };
}

// -- top-level declarations: let/const/class -> var ------------------------------------------

const KEYWORDS_BEFORE_REGEX = new Set(["return", "typeof", "instanceof", "in", "of", "new",
  "delete", "void", "throw", "case", "do", "else", "yield", "await"]);
const DECLARATIONS = new Set(["var", "let", "const", "class", "function", "async", "enum",
  "import", "export"]);

// Rewrites the declarations at the top level of `code`, and says whether its last top-level
// statement is a declaration (which must show no result, as in a notebook). A small scanner:
// strings, templates, comments and regular expressions are skipped, brackets counted.
function rewriteTopLevel(code) {
  const out = [];
  const stack = []; // "(", "[", "{", "${" (a template's substitution)
  let i = 0;
  let last = 0; // code[last:i] not yet copied
  let prev = null; // previous significant token: {text, kind}
  let newlineSincePrev = true;
  let classBody = -1; // stack depth whose closing "}" ends a rewritten class
  let awaitingClassBody = false;
  let lastStatementIsDeclaration = false;

  const emit = (upTo, replacement) => {
    out.push(code.slice(last, i), replacement);
    last = upTo;
  };
  const atStatementStart = () => stack.length === 0 && (prev === null || prev.text === ";" ||
    prev.text === "}" || newlineSincePrev);
  const regexAllowed = () => prev === null || (prev.kind === "punct" && !")]}".includes(prev.text)) ||
    (prev.kind === "word" && KEYWORDS_BEFORE_REGEX.has(prev.text));

  const skipTemplate = () => { // from just after "`" or "}" of a substitution
    while (i < code.length) {
      const c = code[i];
      if (c === "\\") { i += 2; continue; }
      if (c === "`") { i++; return; }
      if (c === "$" && code[i + 1] === "{") { i += 2; stack.push("${"); return; }
      i++;
    }
  };

  while (i < code.length) {
    const c = code[i];
    if (c === "\n") { newlineSincePrev = true; i++; continue; }
    if (/\s/.test(c)) { i++; continue; }
    if (c === "/" && code[i + 1] === "/") { while (i < code.length && code[i] !== "\n") i++; continue; }
    if (c === "/" && code[i + 1] === "*") {
      const end = code.indexOf("*/", i + 2);
      if (code.slice(i, end < 0 ? code.length : end).includes("\n")) newlineSincePrev = true;
      i = end < 0 ? code.length : end + 2;
      continue;
    }
    const start = i;
    const startsStatement = atStatementStart();
    let token;
    if (c === "'" || c === '"') {
      i++;
      while (i < code.length && code[i] !== c && code[i] !== "\n") i += code[i] === "\\" ? 2 : 1;
      i++;
      token = { text: "str", kind: "value" };
    } else if (c === "`") {
      i++;
      skipTemplate();
      token = { text: "tmpl", kind: "value" };
    } else if (c === "/" && regexAllowed()) {
      i++;
      let inClass = false;
      while (i < code.length && code[i] !== "\n") {
        if (code[i] === "\\") { i += 2; continue; }
        if (code[i] === "[") inClass = true;
        else if (code[i] === "]") inClass = false;
        else if (code[i] === "/" && !inClass) break;
        i++;
      }
      i++;
      while (i < code.length && /[a-z]/i.test(code[i])) i++;
      token = { text: "regex", kind: "value" };
    } else if (/[A-Za-z_$\u0080-\uffff]/.test(c)) {
      while (i < code.length && /[\w$\u0080-\uffff]/.test(code[i])) i++;
      const word = code.slice(start, i);
      token = { text: word, kind: "word" };
      if (startsStatement && !(prev && prev.text === ".")) {
        lastStatementIsDeclaration = DECLARATIONS.has(word);
        if (word === "let" || word === "const") {
          // `let` as a name (`let = 1`, `let.x`) is left alone.
          const rest = code.slice(i).match(/^\s*([\[{A-Za-z_$\u0080-\uffff])/);
          if (rest) { i = start; emit(start + word.length, "var"); i = start + word.length; }
        } else if (word === "class") {
          const name = code.slice(i).match(/^\s+([A-Za-z_$][\w$]*)/);
          if (name && name[1] !== "extends") {
            i = start;
            emit(start + word.length, `var ${name[1]} = class`);
            i = start + word.length;
            awaitingClassBody = true;
          }
        }
      }
    } else if (/[0-9]/.test(c) || (c === "." && /[0-9]/.test(code[i + 1] || ""))) {
      while (i < code.length && /[\w.]/.test(code[i])) i++;
      token = { text: "num", kind: "value" };
    } else {
      i++;
      if (startsStatement && c !== ";" && c !== "}") lastStatementIsDeclaration = false;
      if (c === "(" || c === "[") stack.push(c);
      else if (c === "{") {
        stack.push("{");
        if (awaitingClassBody && stack.length === 1) { classBody = 1; awaitingClassBody = false; }
      } else if (c === ")" || c === "]") stack.pop();
      else if (c === "}") {
        const opened = stack.pop();
        if (opened === "${") { skipTemplate(); token = { text: "tmpl", kind: "value" }; }
        else if (classBody === 1 && stack.length === 0) {
          classBody = -1;
          emit(i, ";"); // the class expression ends where the declaration did
        }
      }
      token = token || { text: c, kind: "punct" };
    }
    if (startsStatement && token.kind === "value") {
      lastStatementIsDeclaration = false;
    }
    prev = token;
    newlineSincePrev = false;
  }
  out.push(code.slice(last));
  return { code: out.join(""), declaration: lastStatementIsDeclaration };
}

// -- evaluation -------------------------------------------------------------------------------

const server = repl.start({
  input: new PassThrough(), output: new PassThrough(), terminal: false, prompt: "",
  useGlobal: false, breakEvalOnSigint: true, ignoreUndefined: true,
});
server.context.require = require("node:module").createRequire(path.join(process.cwd(), "cell.js"));
server.context.display = (value) => showDisplay(value);
// `import x from "m"`'s x: a CommonJS module's exports, or an ES module's default.
server.context.__tciDefault = (module) => (module && module.__esModule ? module.default : module);
// The REPL's own console writes to its (unused) output stream: the process's one is in-band.
server.context.console = console;
let pending = null; // the running call's finish(error, value)
// The REPL's domain sees the errors of awaited code (and of callbacks that run later): the
// running call's error, or stderr text once no call is running.
server._domain.removeAllListeners("error");
server._domain.on("error", (error) => {
  if (pending) pending(error, undefined);
  else send({ type: "stream", name: "stderr", text: `Uncaught ${describe(error)}\n` });
});

function describe(error) {
  if (!(error instanceof Error) && !(error && typeof error.stack === "string")) {
    return util.inspect(error);
  }
  const lines = String(error.stack || `${error.name}: ${error.message}`).split("\n");
  // Frames of the REPL, vm and this driver would only confuse: the user's code is "cell".
  return lines.filter((line) => !/^\s+at /.test(line) || /\bcell:\d/.test(line)).join("\n");
}

function showDisplay(value) {
  const bundle = value[DISPLAY]();
  if (bundle && typeof bundle === "object") send({ type: "display_data", data: bundle });
}

function showResult(value) {
  if (value === undefined) return;
  if (value !== null && typeof value === "object" && typeof value[DISPLAY] === "function") {
    showDisplay(value);
    return;
  }
  send({ type: "execute_result", data: { "text/plain": util.inspect(value) } });
}

let esbuild = null;
// Static imports (at a line's start or after a `;`): Node's REPL cannot run them, so each becomes a `var`
// bound by `require` (the names then persist like any declaration); `import type` goes.
const IMPORT_FROM = /(^[ \t]*|;[ \t]*)import\s+(type\s+)?([\w$]+\s*,?\s*)?(\*\s*as\s+[\w$]+|\{[^}]*\})?\s*from\s*(['"][^'"\n]+['"])/gm;
const IMPORT_BARE = /(^[ \t]*|;[ \t]*)import\s*(['"][^'"\n]+['"])/gm;

function rewriteImports(code) {
  return code.replace(IMPORT_FROM, (whole, indent, typeOnly, first, rest, source) => {
    if (typeOnly) return indent;
    const parts = [];
    const name = first && first.replace(/[\s,]/g, "");
    if (name) parts.push(`var ${name} = __tciDefault(require(${source}));`);
    if (rest && rest.startsWith("*")) parts.push(`var ${rest.replace(/^\*\s*as\s+/, "")} = require(${source});`);
    else if (rest) {
      const names = rest.slice(1, -1).split(",").map((n) => n.trim()).filter((n) => n && !n.startsWith("type "))
        .map((n) => n.replace(/\s+as\s+/, ": "));
      if (names.length) parts.push(`var { ${names.join(", ")} } = require(${source});`);
    }
    return indent + parts.join(" ");
  }).replace(IMPORT_BARE, (whole, indent, source) => `${indent}require(${source});`);
}

async function transpile(code, loader) {
  if (esbuild === null) {
    try {
      esbuild = require(require.resolve("esbuild", { paths: NODE_MODULES.split(":") }));
    } catch {
      throw new Error("TypeScript needs esbuild, which is not installed on this server " +
        "(make toolchains installs it)");
    }
  }
  const result = await esbuild.transform(code, { loader, target: "node20" });
  return result.code;
}

async function run(code, language) {
  let source = code;
  source = rewriteImports(source);
  if (language === "typescript") source = await transpile(source, "ts");
  const rewritten = rewriteTopLevel(source);
  source = rewritten.code + (rewritten.declaration ? "\n;undefined" : "");
  return new Promise((resolve) => {
    let finished = false;
    pending = (error, value) => {
      if (finished) return;
      finished = true;
      pending = null;
      process.removeListener("SIGINT", onAwaitInterrupt);
      resolve([error, value]);
    };
    const finish = pending;
    server.eval(source, server.context, "cell", (error, value) => finish(error, value));
    if (!finished) process.on("SIGINT", onAwaitInterrupt); // its synchronous part is over
  });
}

// A SIGINT while a call awaits ends it as interrupted; what it awaited may still settle
// later, unseen. Listened to only then: any SIGINT listener keeps breakEvalOnSigint from
// stopping the synchronous part (the process would have to be killed instead).
function onAwaitInterrupt() {
  if (pending) pending(new Error("Interrupted (KeyboardInterrupt)"), undefined);
}

async function handle(code, language) {
  let error, value;
  try {
    [error, value] = await run(code, language);
  } catch (failure) {
    error = failure;
  }
  if (error) {
    let text = describe(error);
    let name = (error && error.name) || "Error";
    if (/Script execution was interrupted|Interrupted \(KeyboardInterrupt\)/.test(text)) {
      [text, name] = ["Interrupted (KeyboardInterrupt)", "KeyboardInterrupt"];
    }
    if (error.errors && error.message === "Transform failed") text = `TypeScript: ${error.message}\n` +
      error.errors.map((e) => `${e.location ? `cell:${e.location.line}:${e.location.column}: ` : ""}${e.text}`).join("\n");
    send({ type: "error", data: text, ename: name });
  } else {
    try {
      showResult(value);
    } catch (failure) {
      send({ type: "error", data: `could not show the result: ${describe(failure)}`, ename: "Error" });
    }
  }
  send({ type: "done", ok: !error });
}

// "<length> <language>\n<code>" frames, one call at a time.
let buffered = Buffer.alloc(0);
let running = false;
const queue = [];
async function drain() {
  if (running) return;
  running = true;
  while (queue.length) {
    const [code, language] = queue.shift();
    await handle(code, language);
  }
  running = false;
}
const commands = fs.createReadStream(null, { fd: COMMANDS, highWaterMark: 1 << 16 });
commands.on("data", (chunk) => {
  buffered = Buffer.concat([buffered, chunk]);
  for (;;) {
    const newline = buffered.indexOf(10);
    if (newline < 0) return;
    const [length, language] = buffered.subarray(0, newline).toString().split(" ");
    const size = Number(length);
    if (buffered.length < newline + 1 + size) return;
    queue.push([buffered.subarray(newline + 1, newline + 1 + size).toString("utf8"), language]);
    buffered = buffered.subarray(newline + 1 + size);
    drain();
  }
});
commands.on("end", () => process.exit(0));
process.on("uncaughtException", (error) => {
  if (pending) pending(error, undefined);
  else send({ type: "stream", name: "stderr", text: `Uncaught ${describe(error)}\n` });
});
send({ type: "ready" });
