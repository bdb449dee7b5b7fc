// One session as a notebook: cells that run in it with streamed outputs and a stop button,
// the session's countdown, its files, and a clear state when it has ended.

import { ApiError, api } from "./api.js";
import { countdown, everySecond, h } from "./dom.js";
import { CodeEditor } from "./editor.js";
import { FilesPanel } from "./files.js";
import { forgetCells, loadCells, saveCells } from "./notebooks.js";
import { OutputArea } from "./outputs.js";
import { confirmButton, startSession } from "./sessions.js";

const FIRST_CELL = `import matplotlib.pyplot as plt
import numpy as np

x = np.linspace(0, 2 * np.pi, 200)
print("max of sin:", np.sin(x).max())
plt.plot(x, np.sin(x))
plt.title("sin(x)")
plt.show()`;

// A save waiting for typing to pause; done at once if the page is left or reloaded.
let unsaved = null;
window.addEventListener("pagehide", () => unsaved?.());

export async function notebookView(app, sessionId) {
  app.main.replaceChildren(h("p", { class: "state loading" }, "Opening session…"));
  let session;
  try {
    session = (await api.sessions()).find((s) => s.id === sessionId);
  } catch (error) {
    app.fail(error);
    return;
  }
  if (!session) {
    endedState(app, sessionId, await endReason(sessionId));
    return;
  }
  new Notebook(app, session).render();
}

/** Why a session is gone: the server says it on any call to it (410), or 404 if unknown. */
async function endReason(sessionId) {
  try {
    await api.files(sessionId);
    return "It is no longer listed.";
  } catch (error) {
    return error instanceof ApiError ? error.message : String(error);
  }
}

function endedState(app, sessionId, reason) {
  const start = h("button", { type: "button", class: "primary",
    onclick: () => startSession(app, start) }, "Start a new session");
  app.main.replaceChildren(h("section", { class: "state ended card", id: "session-ended" },
    h("h1", {}, "This session is not available"),
    h("p", { class: "mono" }, sessionId),
    h("p", { class: "reason" }, reason),
    h("p", {}, start, " ", h("a", { href: "#/sessions", class: "button" }, "Back to sessions"))));
}

class Notebook {
  constructor(app, session) {
    this.app = app;
    this.session = session;
    this.cells = [];
    this.ended = false;
    this.files = new FilesPanel(app, session.id);
    this.saved = loadCells(session.id, () => [{ code: FIRST_CELL, outputs: [], count: null }]);
  }

  /** Saves the cells; typing (`soon`) saves once it pauses rather than at every key, and a
   *  page that goes away first saves what is pending. */
  persist(soon = false) {
    clearTimeout(this.saveTimer);
    const save = () => {
      unsaved = null;
      saveCells(this.session.id, this.saved);
    };
    if (!soon) {
      save();
      return;
    }
    unsaved = save;
    this.saveTimer = setTimeout(save, 300);
  }

  render() {
    const { session } = this;
    this.countElement = h("span", { class: "execute-count" }, String(session.execute_count));
    const expires = h("span", { class: "countdown" });
    everySecond(expires, () => {
      expires.textContent = countdown(session.expires_at);
      if (expires.textContent === "expired" && !this.ended) this.markEnded("It has expired.");
    });
    this.cellList = h("div", { class: "cells" });
    const page = h("section", { class: "page notebook" },
      h("div", { class: "page-head" },
        h("div", {},
          h("h1", {}, "Session ", h("span", { class: "mono", id: "session-id" }, session.id)),
          h("p", { class: "muted" }, "Executions: ", this.countElement, " · expires in ",
            expires, " · Shift+Enter runs a cell")),
        h("div", { class: "actions" },
          h("button", { type: "button", id: "run-all", title: "Run every cell, top to bottom",
            onclick: () => this.cells.forEach((cell) => cell.run("stay")) }, "Run all"),
          h("a", { href: "#/sessions", class: "button" }, "All sessions"),
          confirmButton("End session", "End it now?", () => this.end(),
            { class: "danger", id: "end-session" }))),
      h("div", { class: "notebook-body" },
        h("div", { class: "cells-column" }, this.cellList,
          h("button", { type: "button", class: "add-cell", onclick: () => this.addCell().focus() },
            "+ Add cell")),
        this.files.element));
    this.app.main.replaceChildren(page);
    for (const saved of this.saved) this.addCell(saved);
    this.files.refresh();
    this.cells[0]?.editor.focus();
  }

  addCell(saved, after) {
    if (!saved) {
      saved = { code: "", outputs: [], count: null };
      const index = after ? this.saved.indexOf(after.saved) + 1 : this.saved.length;
      this.saved.splice(index, 0, saved);
    }
    const cell = new Cell(this, saved);
    const index = after ? this.cells.indexOf(after) + 1 : this.cells.length;
    this.cells.splice(index, 0, cell);
    this.cellList.insertBefore(cell.element, this.cellList.children[index] || null);
    this.persist();
    return cell;
  }

  removeCell(cell) {
    if (this.cells.length === 1) return;
    this.cells.splice(this.cells.indexOf(cell), 1);
    this.saved.splice(this.saved.indexOf(cell.saved), 1);
    cell.element.remove();
    this.persist();
  }

  /** Shift+Enter: the next cell gets the focus, created if this was the last. */
  advanceFrom(cell) {
    const next = this.cells[this.cells.indexOf(cell) + 1] || this.addCell(undefined, cell);
    next.focus();
  }

  async end() {
    try {
      await api.endSession(this.session.id);
      clearTimeout(this.saveTimer);
      unsaved = null;
      forgetCells(this.session.id);
      this.app.navigate("#/sessions");
    } catch (error) {
      this.app.fail(error);
    }
  }

  markEnded(reason) {
    this.ended = true;
    this.app.showBanner(`This session has ended: ${reason}`, { action: {
      label: "Start a new session", run: () => startSession(this.app) } });
  }

  /** The server serializes a session's calls; the console keeps one cell running at a time so
   *  that Stop always means the cell the user sees running. */
  async run(cell) {
    while (this.running) await this.running;
    let finished;
    this.running = new Promise((resolve) => (finished = resolve));
    try {
      await cell.execute();
    } finally {
      this.running = null;
      finished();
      this.persist();
      this.files.refresh();
    }
  }
}

class Cell {
  constructor(notebook, saved) {
    this.notebook = notebook;
    this.saved = saved;
    this.outputs = new OutputArea();
    for (const output of saved.outputs) this.outputs.add(output);
    this.editor = new CodeEditor({
      value: saved.code,
      onRun: (mode) => this.run(mode),
      onChange: (code) => {
        saved.code = code;
        notebook.persist(true);
      },
    });
    this.prompt = h("div", { class: "prompt" }, this.label());
    this.runButton = h("button", { type: "button", class: "run", title: "Run (Shift+Enter)",
      onclick: () => this.run("stay") }, "Run");
    this.stopButton = h("button", { type: "button", class: "stop", hidden: true,
      title: "Interrupt (KeyboardInterrupt)", onclick: () => this.stop() }, "Stop");
    this.status = h("span", { class: "cell-status", role: "status" });
    this.element = h("div", { class: "cell" },
      this.prompt,
      h("div", { class: "cell-main" },
        this.editor.element,
        h("div", { class: "cell-toolbar" }, this.runButton, this.stopButton, this.status,
          h("button", { type: "button", class: "link remove", title: "Delete cell",
            onclick: () => notebook.removeCell(this) }, "Delete")),
        this.outputs.element));
  }

  label() {
    return this.saved.count === null ? "[ ]" : `[${this.saved.count}]`;
  }

  focus() {
    this.editor.focus();
    this.element.scrollIntoView({ block: "nearest" });
  }

  run(mode) {
    if (mode === "advance") this.notebook.advanceFrom(this);
    if (this.element.classList.contains("running") || this.element.classList.contains("queued")) {
      return;
    }
    this.element.classList.add("queued");
    this.status.textContent = "Queued…";
    this.notebook.run(this);
  }

  async execute() {
    const { notebook, saved } = this;
    this.element.classList.replace("queued", "running");
    this.prompt.textContent = "[*]";
    this.runButton.disabled = true;
    this.stopButton.hidden = false;
    this.stopButton.disabled = false;
    this.outputs.clear();
    saved.outputs = [];
    const started = performance.now();
    const ticking = setInterval(() => {
      this.status.textContent = `Running… ${((performance.now() - started) / 1000).toFixed(0)} s`;
    }, 1000);
    this.status.textContent = "Running…";
    this.controller = new AbortController();
    try {
      await api.execute(notebook.session.id, this.editor.value, (output) => {
        saved.outputs.push(output);
        this.outputs.add(output);
      }, this.controller.signal);
      notebook.session.execute_count += 1;
      saved.count = notebook.session.execute_count;
      notebook.countElement.textContent = String(saved.count);
      const failed = saved.outputs.some((o) => o.type === "error");
      this.status.textContent = `${failed ? "Failed" : "Done"} in ${formatElapsed(started)}`;
      this.element.classList.toggle("failed", failed);
    } catch (error) {
      this.status.textContent = "Not run";
      if (error.name === "AbortError") {
        this.outputs.addProblem("Stopped: the connection was closed, which interrupts the cell.");
      } else if (error instanceof ApiError && error.kind === "bad-key") {
        notebook.app.fail(error);
      } else {
        this.outputs.addProblem(error.message);
        if (error instanceof ApiError && error.kind === "ended") notebook.markEnded(error.message);
      }
    } finally {
      clearInterval(ticking);
      this.element.classList.remove("running", "queued");
      this.prompt.textContent = this.label();
      this.runButton.disabled = false;
      this.stopButton.hidden = true;
    }
  }

  async stop() {
    this.stopButton.disabled = true;
    this.status.textContent = "Stopping…";
    try {
      const answer = await api.interrupt(this.notebook.session.id);
      if (answer.interrupted) return; // the cell ends with its KeyboardInterrupt error
    } catch (error) {
      if (error instanceof ApiError && error.kind === "bad-key") {
        this.notebook.app.fail(error);
        return;
      }
    }
    // No interrupt endpoint or nothing running there: closing the stream interrupts too.
    this.controller?.abort();
  }
}

function formatElapsed(started) {
  const ms = performance.now() - started;
  return ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(1)} s`;
}
