// The console's shell: sign-in, the page banner and the hash router
// (#/sessions, #/session/<id>, #/usage). Each view renders itself into <main>.

import { ApiError, api, key } from "./api.js";
import { h } from "./dom.js";
import { notebookView } from "./notebook.js";
import { sessionsView } from "./sessions.js";
import { usageView } from "./usage.js";

const main = document.getElementById("view");
const nav = document.getElementById("nav");
const banner = document.getElementById("banner");

/** What every view gets: where to draw, how to report trouble, how to move on. */
const app = {
  main,
  navigate(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  },
  showBanner(message, { kind = "error", action } = {}) {
    banner.replaceChildren(h("span", {}, message));
    if (action) banner.append(h("button", { type: "button", onclick: action.run }, action.label));
    banner.append(h("button", { type: "button", class: "link", "aria-label": "Dismiss",
      onclick: hideBanner }, "×"));
    banner.className = `banner ${kind}`;
    banner.hidden = false;
  },
  /** The one place API failures turn into what the user sees. */
  fail(error) {
    if (error instanceof ApiError && error.kind === "bad-key") {
      key.clear();
      signIn("The server no longer accepts this key (revoked?). Sign in again.");
      return;
    }
    const message = error instanceof ApiError ? error.message : `Unexpected error: ${error}`;
    app.showBanner(message);
    console.error(error);
  },
};

function hideBanner() {
  banner.hidden = true;
}

function setNav(page) {
  nav.hidden = false;
  for (const link of nav.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === page);
  }
}

function signIn(problem) {
  nav.hidden = true;
  const input = h("input", { type: "password", id: "api-key", name: "api-key", required: true,
    autocomplete: "off", spellcheck: "false", placeholder: "tci_…" });
  const error = h("p", { class: "form-error", role: "alert" }, problem || "");
  error.hidden = !problem;
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "card signin", onsubmit: async (event) => {
    event.preventDefault();
    submit.disabled = true;
    submit.textContent = "Checking…";
    error.hidden = true;
    try {
      await api.checkKey(input.value.trim());
      key.set(input.value.trim());
      if (!location.hash || location.hash === "#/") location.hash = "#/sessions";
      else route();
    } catch (failure) {
      error.textContent = failure instanceof ApiError && failure.kind === "bad-key"
        ? "That key was not accepted. Check it, or create one with `tci keys create --name NAME`."
        : failure.message;
      error.hidden = false;
      submit.disabled = false;
      submit.textContent = "Sign in";
    }
  } },
  h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, "Use an API key of this server. It stays in this tab only " +
    "(session storage) and is sent as a Bearer header, never in a URL."),
  h("label", { for: "api-key" }, "API key"), input, error, submit);
  main.replaceChildren(form);
  input.focus();
}

function route() {
  hideBanner();
  if (!key.get()) {
    signIn();
    return;
  }
  const [page = "sessions", id] = location.hash.replace(/^#\/?/, "").split("/");
  if (page === "session" && id) {
    setNav("sessions");
    notebookView(app, decodeURIComponent(id));
  } else if (page === "usage") {
    setNav("usage");
    usageView(app);
  } else {
    setNav("sessions");
    sessionsView(app);
  }
}

document.getElementById("sign-out").addEventListener("click", () => {
  key.clear();
  location.hash = "";
  route();
});
window.addEventListener("hashchange", route);
route();
