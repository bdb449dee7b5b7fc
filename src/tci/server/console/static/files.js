// The session's files: upload (drag and drop or pick), list, download.

import { api } from "./api.js";
import { formatBytes, h } from "./dom.js";

export class FilesPanel {
  constructor(app, sessionId) {
    this.app = app;
    this.sessionId = sessionId;
    this.list = h("div", { class: "files-list" }, h("p", { class: "state loading" }, "Loading…"));
    this.status = h("p", { class: "files-status", role: "status" });
    this.picker = h("input", { type: "file", multiple: true, hidden: true, id: "file-picker",
      onchange: () => this.upload([...this.picker.files]) });
    this.dropZone = h("div", { class: "drop-zone", id: "drop-zone", tabindex: "0",
      role: "button", onclick: () => this.picker.click(),
      onkeydown: (event) => (event.key === "Enter" || event.key === " ") && this.picker.click(),
      ondragover: (event) => {
        event.preventDefault();
        this.dropZone.classList.add("over");
      },
      ondragleave: () => this.dropZone.classList.remove("over"),
      ondrop: (event) => {
        event.preventDefault();
        this.dropZone.classList.remove("over");
        this.upload([...event.dataTransfer.files]);
      } },
    h("strong", {}, "Drop files here"), h("span", {}, " or click to choose"));
    this.element = h("aside", { class: "files card", id: "files" },
      h("div", { class: "panel-head" }, h("h2", {}, "Files"),
        h("button", { type: "button", class: "link", onclick: () => this.refresh() }, "Refresh")),
      this.dropZone, this.picker, this.status, this.list);
  }

  setStatus(message, kind = "") {
    this.status.textContent = message;
    this.status.className = `files-status ${kind}`;
  }

  async upload(files) {
    let failed = 0;
    for (const file of files) {
      this.setStatus(`Uploading ${file.name}…`);
      try {
        await api.upload(this.sessionId, file.name, file);
      } catch (error) {
        failed += 1;
        this.setStatus(`${file.name}: ${error.message}`, "error");
      }
    }
    this.picker.value = "";
    if (!failed) this.setStatus(`Uploaded ${files.length} file${files.length === 1 ? "" : "s"}.`);
    await this.refresh();
  }

  async refresh() {
    let files;
    try {
      files = await api.files(this.sessionId);
    } catch (error) {
      this.list.replaceChildren(h("p", { class: "state error" }, error.message));
      return;
    }
    if (!files.length) {
      this.list.replaceChildren(h("p", { class: "state empty" },
        "No files yet. Files your code writes in its working directory appear here."));
      return;
    }
    files.sort((a, b) => a.path.localeCompare(b.path));
    this.list.replaceChildren(h("ul", {}, files.map((file) => h("li", { dataset: {
      path: file.path } },
    h("span", { class: "file-name mono", title: file.path }, file.path),
    h("span", { class: "muted" }, formatBytes(file.size)),
    h("button", { type: "button", class: "link", onclick: () => this.download(file.path) },
      "Download")))));
  }

  async download(path) {
    try {
      const blob = await api.download(this.sessionId, path);
      // The key travels in a header, so a plain link cannot fetch the file: hand the browser
      // the bytes we fetched instead.
      const url = URL.createObjectURL(blob);
      const link = h("a", { href: url, download: path.split("/").pop() });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (error) {
      this.setStatus(`${path}: ${error.message}`, "error");
    }
  }
}
