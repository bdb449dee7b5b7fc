// Each session's cells (code and outputs), kept in the tab's sessionStorage so a reload or a
// visit to another page brings the notebook back as it was. Outputs can be large (images): if
// the browser's quota is hit, the code alone is kept.

const PREFIX = "tci.notebook.";

export function loadCells(sessionId, fallback) {
  try {
    const cells = JSON.parse(sessionStorage.getItem(PREFIX + sessionId));
    if (Array.isArray(cells) && cells.length) return cells;
  } catch {
    // unreadable: start afresh
  }
  return fallback();
}

export function saveCells(sessionId, cells) {
  try {
    sessionStorage.setItem(PREFIX + sessionId, JSON.stringify(cells));
  } catch {
    const codeOnly = cells.map(({ code }) => ({ code, outputs: [], count: null }));
    try {
      sessionStorage.setItem(PREFIX + sessionId, JSON.stringify(codeOnly));
    } catch {
      // storage unavailable: the notebook lives as long as the page
    }
  }
}

export function forgetCells(sessionId) {
  sessionStorage.removeItem(PREFIX + sessionId);
}
