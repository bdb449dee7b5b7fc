// Python (IPython) syntax highlighting: one pass of a tokenizing regex over the whole text, so
// triple-quoted strings spanning lines are coloured right. Returns HTML with escaped text.

const KEYWORDS = new Set(("and as assert async await break class continue def del elif else " +
  "except finally for from global if import in is lambda nonlocal not or pass raise return " +
  "try while with yield match case").split(" "));
const CONSTANTS = new Set(["True", "False", "None", "self", "cls"]);
const BUILTINS = new Set(("abs all any bin bool bytes callable chr dict dir divmod enumerate " +
  "eval exec filter float format frozenset getattr globals hasattr hash help hex id input int " +
  "isinstance issubclass iter len list locals map max min next object oct open ord pow print " +
  "property range repr reversed round set setattr slice sorted staticmethod str sum super " +
  "tuple type vars zip classmethod Exception ValueError TypeError KeyError IndexError " +
  "RuntimeError").split(" "));

const TOKEN = new RegExp([
  /(#[^\n]*)/,                                                           // 1 comment
  /((?:[rRbBuUfF]{1,2})?(?:'''[\s\S]*?(?:'''|$(?![\s\S]))|"""[\s\S]*?(?:"""|$(?![\s\S]))|'(?:\\.|[^'\\\n])*'?|"(?:\\.|[^"\\\n])*"?))/, // 2 string
  /(@[\w.]+)/,                                                           // 3 decorator
  /(\b(?:0[xX][\da-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d+)?j?)\b)/, // 4 number
  /(^[ \t]*[!%][^\n]*)/,                                                  // 5 shell / magic line
  /([A-Za-z_]\w*)/,                                                      // 6 name
].map((r) => r.source).join("|"), "gm");

const escapeHtml = (text) =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

const span = (cls, text) => `<span class="tok-${cls}">${escapeHtml(text)}</span>`;

export function highlightPython(source) {
  let html = "";
  let last = 0;
  let previousName = "";
  for (const match of source.matchAll(TOKEN)) {
    html += escapeHtml(source.slice(last, match.index));
    last = match.index + match[0].length;
    const [text, comment, string, decorator, number, magic, name] = match;
    if (comment) html += span("comment", comment);
    else if (string) html += span("string", string);
    else if (decorator) html += span("decorator", decorator);
    else if (number) html += span("number", number);
    else if (magic) html += span("magic", magic);
    else if (name) {
      if (previousName === "def" || previousName === "class") html += span("def", name);
      else if (KEYWORDS.has(name)) html += span("keyword", name);
      else if (CONSTANTS.has(name)) html += span("constant", name);
      else if (BUILTINS.has(name)) html += span("builtin", name);
      else html += escapeHtml(name);
      previousName = name;
      continue;
    } else html += escapeHtml(text);
    previousName = "";
  }
  return html + escapeHtml(source.slice(last));
}
