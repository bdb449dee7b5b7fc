// Runs inside a plotly output's iframe (sandboxed: scripts, but an opaque origin with no
// access to the console or its key). Draws the figure from the frame's JSON data block.

const figure = JSON.parse(document.getElementById("figure").textContent);
const target = document.getElementById("plot");
if (window.Plotly) {
  window.Plotly.newPlot(target, figure.data || [], figure.layout || {},
    { responsive: true, displaylogo: false, ...(figure.config || {}) });
} else {
  target.textContent = "plotly.js could not be loaded, so this figure cannot be drawn.";
}
