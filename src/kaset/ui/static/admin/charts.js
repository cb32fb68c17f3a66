// Small inline-SVG charts for the admin console: stacked bars (usage per day) and a line
// (live request rate). Drawn by hand: no chart library, no CDN, a few kilobytes.

const NS = "http://www.w3.org/2000/svg";

// Colour-blind-friendly enough, and distinct on the green theme.
export const PALETTE = ["#1f6f3f", "#3b82c4", "#d9822b", "#8e5ccf", "#c2404b", "#2a9d8f", "#7a6a3a", "#9aa39d"];

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) if (value !== null && value !== undefined) node.setAttribute(name, value);
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

// A "nice" axis maximum (1, 2, 2.5 or 5 times a power of ten) at or above `value`.
export function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function frame(width, height, title) {
  return svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title, preserveAspectRatio: "xMidYMid meet" },
    svg("title", {}, title));
}

function yAxis(root, { left, top, plotW, plotH, max, format }) {
  for (let i = 0; i <= 4; i++) {
    const value = (max * i) / 4;
    const y = top + plotH - (plotH * i) / 4;
    root.append(svg("line", { class: "grid-line", x1: left, x2: left + plotW, y1: y, y2: y }),
      svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, format(value)));
  }
}

/**
 * Stacked bars: one bar per label (a day), one coloured segment per series.
 * series: [{name, values: [number per label], color}]. Each segment carries data-series and
 * data-value, and a tooltip (<title>) with the exact figure.
 */
export function stackedBars({ labels, series, title = "", format = String, empty = "No data", width = 720, height = 260 }) {
  const root = frame(width, height, title);
  const left = 52, right = 10, top = 12, bottom = 36;
  const plotW = width - left - right, plotH = height - top - bottom;
  const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const max = niceMax(Math.max(0, ...totals));
  yAxis(root, { left, top, plotW, plotH, max, format });
  if (!totals.some((v) => v > 0)) {
    root.append(svg("text", { class: "empty", x: left + plotW / 2, y: top + plotH / 2, "text-anchor": "middle" }, empty));
  }
  const slot = plotW / Math.max(1, labels.length);
  const barW = Math.max(1, Math.min(36, slot * 0.7));
  // One x label per ~64 px at most (a date takes about that), whatever the range.
  const every = Math.max(1, Math.ceil(labels.length / Math.max(1, Math.floor(plotW / 64))));
  labels.forEach((label, i) => {
    const x = left + slot * i + (slot - barW) / 2;
    let y = top + plotH;
    for (const s of series) {
      const value = s.values[i] || 0;
      if (value <= 0) continue;
      const h = (value / max) * plotH;
      y -= h;
      root.append(svg("rect", { class: "bar", x: x.toFixed(1), y: y.toFixed(1), width: barW.toFixed(1), height: Math.max(0.5, h).toFixed(1),
        fill: s.color, "data-series": s.name, "data-label": label, "data-value": value },
      svg("title", {}, `${label} · ${s.name}: ${format(value)}`)));
    }
    if (i % every === 0) {
      root.append(svg("text", { x: left + slot * i + slot / 2, y: height - bottom + 16, "text-anchor": "middle" }, label));
    }
  });
  return root;
}

/** A line with a light area under it, for a short history (points: numbers, oldest first). */
export function lineChart({ points, title = "", format = String, color = PALETTE[0], width = 720, height = 140, capacity = 40 }) {
  const root = frame(width, height, title);
  const left = 52, right = 10, top = 10, bottom = 14;
  const plotW = width - left - right, plotH = height - top - bottom;
  const max = niceMax(Math.max(0, ...points));
  yAxis(root, { left, top, plotW, plotH, max, format });
  if (points.length > 1) {
    const step = plotW / (capacity - 1);
    const start = left + plotW - step * (points.length - 1);
    const xy = points.map((v, i) => [start + step * i, top + plotH - (v / max) * plotH]);
    const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    root.append(
      svg("polygon", { points: `${xy[0][0].toFixed(1)},${top + plotH} ${line} ${xy.at(-1)[0].toFixed(1)},${top + plotH}`,
        fill: color, opacity: 0.12 }),
      svg("polyline", { class: "line", points: line, fill: "none", stroke: color, "stroke-width": 2,
        "data-last": points.at(-1) }));
  }
  return root;
}
