// A small Markdown renderer for `text/markdown` outputs: headings, paragraphs, lists, fenced
// code, quotes, rules, and inline code, bold, italic and links. It builds DOM nodes, never
// HTML strings, so text from the user's code stays text; links open only http(s) addresses.

import { el, h } from "./dom.js";

const INLINE = /(`[^`]+`)|(\*\*[^*]+\*\*|__[^_]+__)|(\*[^*\s][^*]*\*|_[^_\s][^_]*_)|(\[[^\]]+\]\([^)\s]+\))/;

function inline(text) {
  const nodes = [];
  let rest = text;
  for (let match = INLINE.exec(rest); match; match = INLINE.exec(rest)) {
    if (match.index) nodes.push(rest.slice(0, match.index));
    const [token, code, strong, em, link] = match;
    if (code) nodes.push(el("code", "", code.slice(1, -1)));
    else if (strong) nodes.push(h("strong", {}, ...inline(strong.slice(2, -2))));
    else if (em) nodes.push(h("em", {}, ...inline(em.slice(1, -1))));
    else if (link) {
      const [, label, href] = link.match(/^\[([^\]]+)\]\(([^)\s]+)\)$/);
      nodes.push(/^https?:\/\//i.test(href)
        ? h("a", { href, target: "_blank", rel: "noopener noreferrer" }, ...inline(label))
        : label);
    }
    rest = rest.slice(match.index + token.length);
  }
  if (rest) nodes.push(rest);
  return nodes;
}

export function renderMarkdown(source) {
  const root = el("div", "markdown");
  const lines = source.replace(/\r\n/g, "\n").split("\n");
  let paragraph = [];
  let list = null;
  const flush = () => {
    if (paragraph.length) root.append(h("p", {}, ...inline(paragraph.join(" "))));
    paragraph = [];
    list = null;
  };
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    let match;
    if (/^\s*```/.test(line)) {
      flush();
      const code = [];
      for (i += 1; i < lines.length && !/^\s*```/.test(lines[i]); i += 1) code.push(lines[i]);
      root.append(h("pre", {}, el("code", "", code.join("\n"))));
    } else if ((match = line.match(/^(#{1,6})\s+(.*)$/))) {
      flush();
      root.append(h(`h${match[1].length}`, {}, ...inline(match[2])));
    } else if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flush();
      root.append(el("hr"));
    } else if ((match = line.match(/^\s*(?:([-*+])|(\d+)[.)])\s+(.*)$/))) {
      const tag = match[1] ? "ul" : "ol";
      if (paragraph.length) flush();
      if (!list || list.tagName.toLowerCase() !== tag) {
        list = el(tag);
        root.append(list);
      }
      list.append(h("li", {}, ...inline(match[3])));
    } else if ((match = line.match(/^>\s?(.*)$/))) {
      flush();
      root.append(h("blockquote", {}, ...inline(match[1])));
    } else if (!line.trim()) {
      flush();
    } else {
      list = null;
      paragraph.push(line.trim());
    }
  }
  flush();
  return root;
}
