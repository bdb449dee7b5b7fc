// A code editor small enough to own: a transparent <textarea> (the browser's own caret,
// selection, undo and IME) over a <pre> that shows the same text highlighted. Both wrap the
// same way, so they stay aligned; the <pre> sizes the box and the textarea fills it.

import { highlightPython } from "./highlight.js";

const INDENT = "    ";

export class CodeEditor {
  /** onRun(mode): mode is "advance" (Shift+Enter) or "stay" (Ctrl/Cmd+Enter). */
  constructor({ value = "", onRun, onChange }) {
    this.onRun = onRun;
    this.onChange = onChange;
    this.element = document.createElement("div");
    this.element.className = "editor";
    this.view = document.createElement("pre");
    this.view.className = "editor-view";
    this.view.setAttribute("aria-hidden", "true");
    this.input = document.createElement("textarea");
    this.input.className = "editor-input";
    this.input.spellcheck = false;
    this.input.autocapitalize = "off";
    this.input.setAttribute("autocomplete", "off");
    this.input.setAttribute("aria-label", "Code");
    this.input.rows = 1;
    this.input.value = value;
    this.element.append(this.view, this.input);
    this.input.addEventListener("input", () => this.refresh(true));
    this.input.addEventListener("keydown", (event) => this.onKey(event));
    this.refresh(false);
  }

  get value() {
    return this.input.value;
  }

  focus() {
    this.input.focus();
  }

  refresh(changed) {
    // A trailing newline needs a character after it, or the <pre> is a line shorter.
    const { value } = this.input;
    this.view.innerHTML = highlightPython(value) + (value.endsWith("\n") || !value ? " " : "");
    if (changed && this.onChange) this.onChange(this.input.value);
  }

  insert(text) {
    // execCommand keeps the browser's undo history; setRangeText is the fallback.
    if (!document.execCommand("insertText", false, text)) {
      this.input.setRangeText(text, this.input.selectionStart, this.input.selectionEnd, "end");
      this.refresh(true);
    }
  }

  currentLine() {
    const { value, selectionStart } = this.input;
    const start = value.lastIndexOf("\n", selectionStart - 1) + 1;
    return { start, text: value.slice(start, selectionStart) };
  }

  onKey(event) {
    if (event.key === "Enter" && (event.shiftKey || event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      this.onRun(event.shiftKey ? "advance" : "stay");
    } else if (event.key === "Enter") {
      event.preventDefault();
      const line = this.currentLine().text;
      let indent = line.match(/^[ \t]*/)[0];
      if (/:\s*(#.*)?$/.test(line)) indent += INDENT;
      this.insert("\n" + indent);
    } else if (event.key === "Tab" && !event.shiftKey) {
      event.preventDefault();
      this.insert(INDENT);
    } else if (event.key === "Tab" && event.shiftKey) {
      event.preventDefault();
      this.dedent();
    } else if (event.key === "Backspace" && this.input.selectionStart === this.input.selectionEnd) {
      const line = this.currentLine().text;
      if (line.length && /^ +$/.test(line) && line.length % INDENT.length === 0) {
        event.preventDefault();
        this.input.setSelectionRange(this.input.selectionStart - INDENT.length,
          this.input.selectionStart);
        this.insert("");
      }
    }
  }

  dedent() {
    const { start } = this.currentLine();
    const removable = this.input.value.slice(start, start + INDENT.length).match(/^ */)[0].length;
    if (!removable) return;
    const caret = this.input.selectionStart;
    this.input.setSelectionRange(start, start + removable);
    this.insert("");
    const back = Math.max(start, caret - removable);
    this.input.setSelectionRange(back, back);
  }
}
