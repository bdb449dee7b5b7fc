// The caller's usage: totals for a window and a small bar chart over time (SVG, no library).

import { api } from "./api.js";
import { formatSeconds, h } from "./dom.js";

const WINDOWS = {
  "24h": { label: "Last 24 hours", hours: 24, bucket: "hour" },
  "7d": { label: "Last 7 days", hours: 24 * 7, bucket: "day" },
  "30d": { label: "Last 30 days", hours: 24 * 30, bucket: "day" },
};
const METRICS = {
  executions: { label: "Executions", format: (v) => String(v) },
  sessions: { label: "Sessions", format: (v) => String(v) },
  cpu_seconds: { label: "CPU time", format: formatSeconds },
  cost_usd: { label: "Cost", format: (v) => `$${v.toFixed(2)}` },
};

let chosenWindow = "24h";
let chosenMetric = "executions";

export function usageView(app) {
  const body = h("div", { class: "usage-body" }, h("p", { class: "state loading" },
    "Loading usage…"));
  const select = h("select", { id: "usage-window", "aria-label": "Window",
    onchange: () => {
      chosenWindow = select.value;
      load();
    } },
  Object.entries(WINDOWS).map(([value, w]) =>
    h("option", { value, selected: value === chosenWindow }, w.label)));
  app.main.replaceChildren(h("section", { class: "page" },
    h("div", { class: "page-head" }, h("h1", {}, "Usage"), select), body));

  async function load() {
    const chosen = WINDOWS[chosenWindow];
    const until = new Date();
    const since = new Date(until.getTime() - chosen.hours * 3600_000);
    let usage;
    try {
      usage = await api.usage({ since: since.toISOString(), until: until.toISOString(),
        bucket: chosen.bucket });
    } catch (error) {
      app.fail(error);
      body.replaceChildren(h("p", { class: "state error" }, "Could not load usage."));
      return;
    }
    body.replaceChildren(cards(usage), chartCard(usage, chosen.bucket));
  }

  function cards(usage) {
    return h("div", { class: "cards", id: "usage-totals" },
      Object.entries(METRICS).map(([name, metric]) => h("button", {
        type: "button", class: `card stat ${name === chosenMetric ? "active" : ""}`,
        dataset: { metric: name }, title: `Chart ${metric.label.toLowerCase()}`,
        onclick: () => {
          chosenMetric = name;
          body.replaceChildren(cards(usage), chartCard(usage, WINDOWS[chosenWindow].bucket));
        } },
      h("span", { class: "stat-label" }, metric.label),
      h("span", { class: "stat-value" }, metric.format(usage[name])))));
  }

  load();
}

function chartCard(usage, bucket) {
  const metric = METRICS[chosenMetric];
  const series = usage.series || [];
  const card = h("div", { class: "card chart-card" },
    h("h2", {}, `${metric.label} per ${bucket}`));
  if (!series.some((point) => point[chosenMetric] > 0)) {
    card.append(h("p", { class: "state empty" }, "Nothing used in this window yet."));
    return card;
  }
  card.append(barChart(series, chosenMetric, metric.format, bucket));
  return card;
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function barChart(series, field, format, bucket) {
  const width = 1000;
  const height = 200;
  const pad = { left: 48, right: 8, top: 10, bottom: 24 };
  const max = Math.max(...series.map((p) => p[field]));
  const step = (width - pad.left - pad.right) / series.length;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart",
    role: "img", "aria-label": `${field} per ${bucket}` });
  const plotHeight = height - pad.top - pad.bottom;
  chart.append(
    svg("line", { x1: pad.left, x2: width - pad.right, y1: height - pad.bottom,
      y2: height - pad.bottom, class: "axis" }),
    svg("text", { x: pad.left - 6, y: pad.top + 8, "text-anchor": "end", class: "tick" },
      format(max)),
    svg("text", { x: pad.left - 6, y: height - pad.bottom, "text-anchor": "end",
      class: "tick" }, format(0)));
  const labelEvery = Math.ceil(series.length / 8);
  series.forEach((point, i) => {
    const barHeight = max ? (point[field] / max) * plotHeight : 0;
    const x = pad.left + i * step;
    const start = new Date(point.start);
    const when = bucket === "hour"
      ? start.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : start.toLocaleDateString([], { month: "short", day: "numeric" });
    const bar = svg("rect", { x: x + step * 0.15, width: Math.max(step * 0.7, 1),
      y: height - pad.bottom - barHeight, height: barHeight, class: "bar" });
    bar.append(svg("title", {}, `${when}: ${format(point[field])}`));
    chart.append(bar);
    if (i % labelEvery === 0) {
      chart.append(svg("text", { x: x + step / 2, y: height - 6, "text-anchor": "middle",
        class: "tick" }, when));
    }
  });
  return chart;
}
