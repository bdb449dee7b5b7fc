// Renders TCI outputs the way a notebook user expects. Everything here comes from untrusted
// code: text goes in as text, images as data: URLs in <img> (which never runs script), and
// HTML into an iframe sandboxed without script permission.

import { el, h } from "./dom.js";
import { renderMarkdown } from "./markdown.js";

const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif"];
const PLOTLY_TYPE = "application/vnd.plotly.v1+json";
const JSON_TYPES = ["application/json", "application/geo+json",
  "application/vnd.vega.v5+json", "application/vnd.vegalite.v4+json"];

const MAX_FRAME_HEIGHT = 600; // taller HTML scrolls inside its frame

// Styles for HTML outputs (pandas tables look like they do in Jupyter).
const FRAME_STYLE = `<style>
  body { margin: 0; font: 13px/1.4 system-ui, sans-serif; color: #1f2328; }
  table { border-collapse: collapse; }
  th, td { padding: 4px 10px; text-align: right; border-bottom: 1px solid #e1e4e8; }
  thead th { border-bottom: 1px solid #8c959f; }
  tbody tr:nth-child(odd) { background: #f6f8fa; }
</style>`;

export class OutputArea {
  constructor() {
    this.element = el("div", "outputs");
    this.lastStream = null; // consecutive stdout (or stderr) chunks share one block
  }

  clear() {
    this.element.replaceChildren();
    this.lastStream = null;
  }

  add(output) {
    const { type, data } = output;
    if (type === "stdout" || type === "stderr") {
      if (this.lastStream?.dataset.stream === type) {
        this.lastStream.textContent += data;
      } else {
        this.lastStream = el("pre", `output ${type}`, data);
        this.lastStream.dataset.stream = type;
        this.element.append(this.lastStream);
      }
      return;
    }
    this.lastStream = null;
    if (type === "error") this.element.append(el("pre", "output error", data));
    else if (type === "display_data" || type === "execute_result") {
      this.element.append(renderBundle(data || {}, type));
    } else this.element.append(el("pre", "output", JSON.stringify(output)));
  }

  /** A problem of the call itself (not of the user's code), e.g. an ended session. */
  addProblem(message) {
    this.lastStream = null;
    this.element.append(el("div", "output problem", message));
  }
}

function renderBundle(bundle, type) {
  const box = el("div", `output ${type === "execute_result" ? "result" : "display"}`);
  const image = IMAGE_TYPES.find((mime) => bundle[mime]);
  if (image) {
    const img = el("img", "output-image");
    img.src = `data:${image};base64,${bundle[image]}`;
    img.alt = bundle["text/plain"] || "image output";
    box.append(img);
  } else if (bundle["image/svg+xml"]) {
    const img = el("img", "output-image");
    img.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(bundle["image/svg+xml"])}`;
    img.alt = bundle["text/plain"] || "SVG output";
    box.append(img);
  } else if (bundle[PLOTLY_TYPE]) {
    box.append(plotlyFrame(bundle[PLOTLY_TYPE]));
  } else if (bundle["text/html"]) {
    box.append(htmlFrame(bundle["text/html"]));
  } else if (JSON_TYPES.some((mime) => bundle[mime] !== undefined)) {
    const mime = JSON_TYPES.find((m) => bundle[m] !== undefined);
    box.append(jsonTree(bundle[mime]));
  } else if (bundle["text/markdown"]) {
    box.append(renderMarkdown(bundle["text/markdown"]));
  } else if (bundle["text/latex"]) {
    box.append(el("pre", "text", bundle["text/latex"]));
  } else if (bundle["text/plain"] !== undefined) {
    box.append(el("pre", "text", bundle["text/plain"]));
  } else if (bundle["application/pdf"]) {
    box.append(el("pre", "text", "[PDF output: download it from the session's files]"));
  } else if (bundle["application/javascript"]) {
    box.append(el("pre", "text", "[JavaScript output is not run by the console]"));
  } else {
    box.append(el("pre", "text", `[${Object.keys(bundle).join(", ") || "empty"} output]`));
  }
  return box;
}

/** An iframe showing `srcdoc` under the sandbox flags given (never both allow-scripts and
 *  allow-same-origin: together they would let the content reach the console). */
function sandboxedFrame(className, sandbox, title, srcdoc) {
  return h("iframe", { class: className, sandbox, title, referrerpolicy: "no-referrer", srcdoc });
}

function htmlFrame(html) {
  // allow-same-origin without allow-scripts: nothing in the frame runs, and the page can
  // still read the frame's height to size it.
  const frame = sandboxedFrame("output-html", "allow-same-origin", "HTML output",
    `<!doctype html><meta charset="utf-8">${FRAME_STYLE}${html}`);
  frame.addEventListener("load", () => {
    // The body's own height: the document's scrollHeight never goes below the frame's.
    const body = frame.contentDocument?.body;
    if (!body) return;
    const scrollbar = body.scrollWidth > frame.clientWidth ? 16 : 0;
    const height = Math.ceil(body.getBoundingClientRect().height) + 2 + scrollbar;
    frame.style.height = `${Math.min(height, MAX_FRAME_HEIGHT)}px`;
  });
  return frame;
}

// A plotly figure needs plotly.js, so its frame may run scripts; it gets no
// allow-same-origin, which makes it an opaque origin that cannot reach the console's storage
// or DOM. The figure goes in as a JSON data block (never executed; "<" escaped so it cannot
// close the block), and the page's script-src 'self' policy still applies inside.
function plotlyFrame(figure) {
  const data = JSON.stringify(figure).replace(/</g, "\\u003c");
  const frame = sandboxedFrame("output-html output-plotly", "allow-scripts", "Plotly figure",
    `<!doctype html><meta charset="utf-8">
<style>html, body { margin: 0; height: 100%; } #plot { height: 100%; }</style>
<div id="plot"></div>
<script type="application/json" id="figure">${data}</script>
<script src="/console/vendor/plotly.min.js"></script>
<script src="/console/plotly-frame.js"></script>`);
  const height = Number(figure?.layout?.height) || 450;
  frame.style.height = `${Math.min(height + 10, 1200)}px`;
  return frame;
}

function jsonTree(value) {
  const details = el("details", "json");
  details.open = true;
  const summary = el("summary", "", Array.isArray(value) ? `Array(${value.length})`
    : value && typeof value === "object" ? `Object {${Object.keys(value).length} keys}` : "JSON");
  details.append(summary, el("pre", "text", JSON.stringify(value, null, 2)));
  return details;
}
