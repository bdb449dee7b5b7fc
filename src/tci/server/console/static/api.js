// The console's only way to the server: the same /v1/tci API every client uses, with the
// key from sessionStorage (never the URL). Failures become ApiError with TCI's messages.

const KEY_STORAGE = "tci.key";
const BASE = "/v1/tci";

export class ApiError extends Error {
  constructor(status, messages) {
    super(messages.join("; ") || `HTTP ${status}`);
    this.status = status;
    this.messages = messages;
  }

  get kind() {
    if (this.status === 0) return "network";
    if (this.status === 401) return "bad-key";
    if (this.status === 404) return "not-found";
    if (this.status === 410) return "ended";
    if (this.status === 413 || this.status === 429) return "limit";
    return "error";
  }
}

export const key = {
  get: () => sessionStorage.getItem(KEY_STORAGE),
  set: (value) => sessionStorage.setItem(KEY_STORAGE, value),
  clear: () => sessionStorage.removeItem(KEY_STORAGE),
};

async function errorFrom(response) {
  let messages = [];
  try {
    const body = await response.json();
    messages = (body.errors || []).map((e) => (typeof e === "string" ? e : e.message || JSON.stringify(e)));
  } catch {
    messages = [response.statusText || `HTTP ${response.status}`];
  }
  return new ApiError(response.status, messages);
}

async function request(method, path, { body, headers = {}, signal, apiKey } = {}) {
  const token = apiKey ?? key.get();
  let response;
  try {
    response = await fetch(BASE + path, {
      method,
      body,
      signal,
      headers: { Authorization: `Bearer ${token}`, ...headers },
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, ["The server could not be reached."]);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

async function json(method, path, options = {}) {
  const response = await request(method, path, options);
  return (await response.json()).data;
}

function jsonBody(value) {
  return { body: JSON.stringify(value), headers: { "Content-Type": "application/json" } };
}

const sessionPath = (id) => `/sessions/${encodeURIComponent(id)}`;
const filePath = (id, path) =>
  `${sessionPath(id)}/files/${path.split("/").map(encodeURIComponent).join("/")}`;

export const api = {
  checkKey: (apiKey) => json("GET", "/sessions", { apiKey }),
  sessions: async () => (await json("GET", "/sessions")).sessions,
  createSession: () => json("POST", "/sessions", jsonBody({})),
  endSession: (id) => json("DELETE", sessionPath(id)),
  interrupt: (id) => json("POST", `${sessionPath(id)}/interrupt`),
  files: async (id) => (await json("GET", `${sessionPath(id)}/files`)).files,
  upload: (id, path, blob) => json("PUT", filePath(id, path), { body: blob }),
  download: async (id, path) => (await request("GET", filePath(id, path))).blob(),
  usage: (params) => json("GET", `/usage?${new URLSearchParams(params)}`),

  /** Runs code with "stream": true; calls onOutput(output) as each one arrives and returns
   *  the final response's data. Errors before the code starts reject with ApiError. */
  async execute(sessionId, code, onOutput, signal) {
    const response = await request("POST", "/execute", {
      signal,
      ...jsonBody({ language: "python", code, session_id: sessionId, stream: true }),
    });
    let result = null;
    for await (const { event, data } of serverSentEvents(response.body)) {
      const payload = JSON.parse(data);
      if (event === "output") onOutput(payload);
      else if (event === "result") result = payload.data;
      else if (event === "error") throw new ApiError(500, payload.errors || []);
    }
    if (result === null) throw new ApiError(0, ["The connection closed before the cell finished."]);
    return result;
  },
};

// Parses a text/event-stream body: yields {event, data} per event; comments are keep-alives.
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}
