// Reading Prometheus' text exposition format (what GET /metrics answers) in the browser, and the
// few sums and quantiles the live tiles need.

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function number(text) {
  if (text === "+Inf" || text === "Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  return Number(text);
}

function unescape(value) {
  return value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
}

/** name -> [{labels, value}] for every sample line; comments and blank lines are skipped. */
export function parseMetrics(text) {
  const samples = new Map();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const match = LINE.exec(line);
    if (!match) continue;
    const [, name, labelText, valueText] = match;
    const labels = {};
    if (labelText) for (const [, key, value] of labelText.matchAll(LABEL)) labels[key] = unescape(value);
    if (!samples.has(name)) samples.set(name, []);
    samples.get(name).push({ labels, value: number(valueText) });
  }
  return samples;
}

/** The sum of a metric's samples whose labels pass `keep` (null when the metric is absent). */
export function total(samples, name, keep = () => true) {
  const rows = samples.get(name);
  if (!rows) return null;
  return rows.filter((row) => keep(row.labels)).reduce((sum, row) => sum + row.value, 0);
}

/** label value -> summed value, grouped by one label. */
export function byLabel(samples, name, label, keep = () => true) {
  const out = new Map();
  for (const row of samples.get(name) || []) {
    if (!keep(row.labels)) continue;
    const key = row.labels[label] ?? "";
    out.set(key, (out.get(key) || 0) + row.value);
  }
  return out;
}

/** Cumulative bucket counts of a histogram, summed over the series `keep` passes: [[le, count]] by le. */
export function buckets(samples, name, keep = () => true) {
  const counts = new Map();
  for (const row of samples.get(`${name}_bucket`) || []) {
    if (!keep(row.labels)) continue;
    const le = number(row.labels.le);
    counts.set(le, (counts.get(le) || 0) + row.value);
  }
  return [...counts.entries()].sort((a, b) => a[0] - b[0]);
}

/** Bucket counts of `now` minus those of `before` (same bounds): what happened in between. */
export function bucketDelta(now, before) {
  const old = new Map(before);
  return now.map(([le, count]) => [le, Math.max(0, count - (old.get(le) || 0))]);
}

/** The q-quantile from cumulative buckets, interpolated inside a bucket as Prometheus'
 *  histogram_quantile does; null without observations. */
export function quantile(q, cumulative) {
  if (!cumulative.length) return null;
  const count = cumulative.at(-1)[1];
  if (!(count > 0)) return null;
  const rank = q * count;
  let lower = 0, below = 0;
  for (const [le, cum] of cumulative) {
    if (cum >= rank) {
      if (le === Infinity) return lower;  // beyond the last finite bound: its value is all we know
      const inBucket = cum - below;
      return inBucket > 0 ? lower + (le - lower) * ((rank - below) / inBucket) : le;
    }
    lower = le; below = cum;
  }
  return lower;
}
