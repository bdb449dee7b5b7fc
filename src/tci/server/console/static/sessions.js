// The caller's live sessions: execute count, countdown to expiry, open and end.

import { api } from "./api.js";
import { countdown, everySecond, formatTime, h } from "./dom.js";

const REFRESH_MS = 10_000;

export async function startSession(app, button) {
  if (button) button.disabled = true;
  try {
    const session = await api.createSession();
    app.navigate(`#/session/${encodeURIComponent(session.id)}`);
  } catch (error) {
    app.fail(error);
    if (button) button.disabled = false;
  }
}

/** A button that asks once more before it acts ("End" then "End now?"). */
export function confirmButton(label, confirmLabel, action, attrs = {}) {
  let armed = null;
  const button = h("button", { type: "button", ...attrs, onclick: async () => {
    if (!armed) {
      button.textContent = confirmLabel;
      button.classList.add("armed");
      armed = setTimeout(() => {
        armed = null;
        button.textContent = label;
        button.classList.remove("armed");
      }, 4000);
      return;
    }
    clearTimeout(armed);
    button.disabled = true;
    await action();
  } }, label);
  return button;
}

export function sessionsView(app) {
  const newButton = h("button", { type: "button", class: "primary", id: "new-session",
    onclick: () => startSession(app, newButton) }, "New session");
  const body = h("div", { class: "sessions-body" }, h("p", { class: "state loading" },
    "Loading sessions…"));
  const page = h("section", { class: "page" },
    h("div", { class: "page-head" }, h("h1", {}, "Sessions"), newButton), body);
  app.main.replaceChildren(page);

  async function load() {
    let sessions;
    try {
      sessions = await api.sessions();
    } catch (error) {
      app.fail(error);
      body.replaceChildren(h("p", { class: "state error" }, "Could not load sessions."));
      return;
    }
    body.replaceChildren(sessions.length ? table(sessions) : empty());
  }

  function empty() {
    return h("div", { class: "state empty" },
      h("p", {}, "No live sessions."),
      h("p", { class: "muted" }, "A session is a Python process with its own variables, " +
        "files and packages. It lives for an hour from its start."));
  }

  function table(sessions) {
    sessions.sort((a, b) => b.started_at.localeCompare(a.started_at));
    return h("table", { class: "list", id: "sessions-table" },
      h("thead", {}, h("tr", {}, ["Session", "Executions", "Started", "Last run", "Expires in",
        ""].map((label) => h("th", {}, label)))),
      h("tbody", {}, sessions.map(row)));
  }

  function row(session) {
    const expires = h("td", { class: "countdown" });
    everySecond(expires, () => {
      expires.textContent = countdown(session.expires_at);
    });
    const href = `#/session/${encodeURIComponent(session.id)}`;
    return h("tr", { dataset: { session: session.id } },
      h("td", {}, h("a", { href, class: "mono" }, session.id)),
      h("td", { class: "num execute-count" }, String(session.execute_count)),
      h("td", {}, formatTime(session.started_at)),
      // A session made without code reports its start as last_execute_at (the field is never
      // null on the wire); "—" says what the user wants to know.
      h("td", {}, session.execute_count ? formatTime(session.last_execute_at) : "—"),
      expires,
      h("td", {}, h("div", { class: "actions row-actions" },
        h("a", { href, class: "button" }, "Open"),
        confirmButton("End", "End now?", async () => {
          try {
            await api.endSession(session.id);
          } catch (error) {
            app.fail(error);
          }
          load();
        }, { class: "danger" }))));
  }

  load();
  const timer = setInterval(() => (page.isConnected ? load() : clearInterval(timer)),
    REFRESH_MS);
}
