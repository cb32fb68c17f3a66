// Kaset's admin console: sign-in (JWT, or an admin API key), keys, users, usage charts, models
// and live metrics. It calls the same public API any admin client would (/v1/admin/*, /v1/usage,
// /v1/models, the Triton repository API, /health/ready, /metrics); nothing here is privileged.

import {
  $, ApiError, addMessages, applyTranslations, credential, describeError, el, language, notify, request, signIn,
  signOut, t, useApiKey, wireLanguageSwitch,
} from "/static/kaset.js";
import { PALETTE, lineChart, stackedBars } from "./charts.js";
import { MESSAGES } from "./messages.js";
import { bucketDelta, buckets, byLabel, parseMetrics, quantile, total } from "./metrics.js";

addMessages(MESSAGES);

const LIMITS = ["requests_per_minute", "concurrent_requests", "tokens_per_day", "audio_seconds_per_day", "images_per_day"];
const TABS = ["overview", "keys", "users", "usage", "models"];
const POLL_MS = 3000;
const HISTORY = 40;  // live chart points: 2 minutes at one every 3 s
// Unloaded on purpose (not a failure): the model is on standby and reloads on its next request.
const STANDBY = new Set(["idle", "lru", "admin", "budget"]);

const state = {
  tab: "overview", users: [], keys: [], models: [], lastUsed: new Map(), usage: null,
  timer: null, polling: false, pollFailed: false, previous: null, history: [],
  // What the sign-in page says, re-rendered when the language changes.
  signinMessage: null, pastedKey: false, modelsTimer: null,
};

// --- formatting -------------------------------------------------------------------------------

const locale = () => (language() === "th" ? "th-TH" : "en-GB");
const fmtNumber = (n, digits = 0) => (n === null || n === undefined || Number.isNaN(n) ? t("common.none")
  : Number(n).toLocaleString(locale(), { maximumFractionDigits: digits }));
const fmtTime = (value) => {
  if (value === null || value === undefined || value === "") return t("common.none");
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return date.toLocaleString(locale(), { dateStyle: "medium", timeStyle: "short" });
};
const fmtDay = (iso) => new Date(`${iso}T00:00:00Z`).toLocaleDateString(locale(), { day: "numeric", month: "short", timeZone: "UTC" });
function fmtBytes(bytes) {
  if (bytes === null || bytes === undefined) return t("common.none");
  if (bytes >= 1024 ** 3) return `${fmtNumber(bytes / 1024 ** 3, 2)} GB`;
  return `${fmtNumber(bytes / 1024 ** 2, 0)} MB`;
}
function fmtSeconds(s) {
  if (s === null || s === undefined) return t("common.none");
  return s < 1 ? `${fmtNumber(s * 1000, 0)} ms` : `${fmtNumber(s, 2)} s`;
}
const isoDay = (date) => date.toISOString().slice(0, 10);
const daysAgo = (n) => isoDay(new Date(Date.now() - n * 86400_000));

// Charts are drawn at their box's width, so their text stays readable on a phone.
function chartWidth(box) { return Math.max(300, Math.min(960, box.clientWidth || 720)); }

function pill(text, kind = "") { return el("span", { class: `pill ${kind}`.trim() }, text); }

// A table whose cells carry their column's name (shown beside each value on a phone).
function fillTable(table, columns, rows, emptyText = "") {
  const head = el("thead", {}, el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : "" }, c.title))));
  const body = el("tbody");
  for (const row of rows) {
    body.append(el("tr", row.attrs || {}, columns.map((c, i) => el("td",
      { class: c.num ? "num" : "", "data-label": c.title, "data-col": c.key }, row.cells[i]))));
  }
  if (!rows.length && emptyText) body.append(el("tr", {}, el("td", { colspan: columns.length, class: "muted" }, emptyText)));
  table.replaceChildren(head, body);
}

// --- alerts and the confirm dialog ------------------------------------------------------------

const consoleAlert = (message, kind = "error") => notify(message, { kind, target: $("#console-alert") });
function showError(err) { consoleAlert(describeError(err)); }

function confirmAction(text, okLabel) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

// --- sign-in ----------------------------------------------------------------------------------

function showSignIn(message = null) {
  stopPolling();
  state.signinMessage = message;
  $("#console").hidden = true;
  $("#signin").hidden = false;
  $("#sign-out").hidden = true;
  $("#who").hidden = true;
  renderSignInMessage();
}

function renderSignInMessage() {
  const m = state.signinMessage;
  notify(m ? m() : "", { kind: m?.kind || "error", target: $("#signin-alert") });
}

// Leaves the console for the sign-in page, saying why (a function: it speaks the current language).
function backToSignIn(message) {
  signOut();
  showSignIn(message);
}

function refuseNonAdmin(c) {
  backToSignIn(c.kind === "token"
    ? () => t("admin.needs_admin", { name: c.username, role: c.role || "?" })
    : () => t("admin.needs_admin_key"));
}

async function enter() {
  const c = credential();
  if (!c) return showSignIn();
  // A token says its role; an API key is asked (its owner's role is read live on the server).
  if (c.kind === "token" && c.role !== "admin") return refuseNonAdmin(c);
  try {
    await loadUsers();
  } catch (err) {
    if (err instanceof ApiError && err.code === "insufficient_role") return refuseNonAdmin(c);
    if (err instanceof ApiError && err.status === 401) return undefined;  // kaset:unauthorized did it
    return showSignIn(() => describeError(err));
  }
  $("#signin").hidden = true;
  $("#console").hidden = false;
  $("#sign-out").hidden = false;
  const who = $("#who");
  who.hidden = false;
  who.textContent = c.kind === "token" ? t("auth.signedin", { name: c.username }) : t("admin.with_key");
  selectTab(TABS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "overview");
  return undefined;
}

async function onPasswordSignIn(event) {
  event.preventDefault();
  const button = event.submitter;
  button.disabled = true;
  try {
    await signIn($("#username").value.trim(), $("#password").value);
    $("#password").value = "";
    await enter();
  } catch (err) {
    showSignIn(() => describeError(err));
  } finally {
    button.disabled = false;
  }
}

async function onKeySignIn(event) {
  event.preventDefault();
  useApiKey($("#api-key").value);
  $("#api-key").value = "";
  // A key refused now was pasted wrong, not "no longer valid": say that instead.
  state.pastedKey = true;
  try { await enter(); } finally { state.pastedKey = false; }
}

// --- tabs -------------------------------------------------------------------------------------

function selectTab(name) {
  state.tab = name;
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === name));
  }
  for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
  consoleAlert("");
  if (name === "overview") startPolling(); else stopPolling();
  const loaders = { overview: () => null, keys: loadKeys, users: loadUsersPanel, usage: loadUsage, models: loadModels };
  Promise.resolve(loaders[name]()).catch((err) => { if (!(err instanceof ApiError && err.status === 401)) showError(err); });
}

// --- limits fields ----------------------------------------------------------------------------

function buildLimitFields() {
  for (const fieldset of document.querySelectorAll("fieldset.limits")) {
    const row = el("div", { class: "row" });
    for (const name of LIMITS) {
      const id = `limit-${fieldset.dataset.limits}-${name}`;
      row.append(el("div", {}, el("label", { for: id, "data-i18n": `limits.${name}` }, t(`limits.${name}`)),
        el("input", { id, name, type: "number", min: 1, step: 1, inputmode: "numeric", "data-limit": name })));
    }
    fieldset.append(row);
  }
}

function readLimits(fieldset) {
  const limits = {};
  for (const input of fieldset.querySelectorAll("[data-limit]")) {
    if (input.value !== "") limits[input.dataset.limit] = Number(input.value);
  }
  return Object.keys(limits).length ? limits : null;
}

function writeLimits(fieldset, limits) {
  for (const input of fieldset.querySelectorAll("[data-limit]")) input.value = limits?.[input.dataset.limit] ?? "";
}

function limitsText(limits) {
  const parts = LIMITS.filter((name) => limits?.[name]).map((name) => t(`limits.short.${name}`, { n: fmtNumber(limits[name]) }));
  return parts.length ? parts.join(", ") : t("limits.none");
}

// --- users ------------------------------------------------------------------------------------

async function loadUsers() {
  state.users = (await request("/v1/admin/users?include_disabled=true")).data;
}

async function loadUsersPanel() {
  const [, audit] = await Promise.all([loadUsers(), request("/v1/admin/audit?limit=25")]);
  renderUsers();
  renderAudit(audit.data);
}

function auditTarget(row) {
  if (row.target_type === "user") {
    const user = state.users.find((u) => String(u.id) === row.target_id);
    return user ? user.username : `${row.target_type} #${row.target_id}`;
  }
  if (row.target_type === "api_key" || row.target_type === "key") {
    const key = state.keys.find((k) => String(k.id) === row.target_id);
    return key ? `${keyName(key)} (${key.prefix}…)` : t("usage.key_id", { id: row.target_id });
  }
  return row.target_id ? `${row.target_id}` : row.target_type;
}

// The changes admins made, newest first (never a key or a password: the server leaves them out).
function renderAudit(rows) {
  const details = (d) => (d ? Object.entries(d).filter(([, v]) => v !== null)
    .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ") : "");
  fillTable($("#audit-table"), [
    { key: "time", title: t("audit.time") }, { key: "actor", title: t("audit.actor") },
    { key: "action", title: t("audit.action") }, { key: "target", title: t("audit.target") },
    { key: "details", title: t("audit.details") },
  ], rows.map((r) => ({
    attrs: { "data-audit-action": r.action, "data-target": r.target_id ?? "" },
    cells: [fmtTime(r.created_at), r.actor, el("code", {}, r.action), auditTarget(r), el("span", { class: "small" }, details(r.details))],
  })), t("audit.none"));
}

function renderUsers() {
  const showDisabled = $("#users-disabled").checked;
  const users = state.users.filter((u) => showDisabled || u.active);
  fillTable($("#users-table"), [
    { key: "username", title: t("users.username") }, { key: "role", title: t("users.role") },
    { key: "password", title: t("users.has_password") }, { key: "status", title: t("keys.status") },
    { key: "created", title: t("keys.created_at") }, { key: "limits", title: t("keys.limits") },
    { key: "actions", title: t("keys.actions") },
  ], users.map((u) => ({
    attrs: { "data-user": u.username, "data-user-id": u.id },
    cells: [
      el("strong", {}, u.username), u.role, u.has_password ? t("common.yes") : t("common.no"),
      u.active ? pill(t("status.active")) : pill(t("status.disabled"), "bad"),
      fmtTime(u.created_at), el("span", { class: "small" }, limitsText(u.limits)),
      el("div", { class: "actions" }, u.active
        ? el("button", { class: "danger", type: "button", "data-action": "disable-user", onclick: () => disableUser(u) }, t("users.disable"))
        : el("button", { class: "secondary", type: "button", "data-action": "enable-user", onclick: () => enableUser(u) }, t("users.enable"))),
    ],
  })));
}

async function onCreateUser(event) {
  event.preventDefault();
  const form = event.target;
  const body = { username: form.username.value.trim(), role: form.role.value };
  if (form.password.value) body.password = form.password.value;
  try {
    await request("/v1/admin/users", { method: "POST", json: body });
    form.reset();
    await loadUsersPanel();
    consoleAlert(t("users.created", { name: body.username }), "ok");
  } catch (err) { showError(err); }
}

async function disableUser(user) {
  if (!await confirmAction(t("users.disable_confirm", { name: user.username }), t("users.disable"))) return;
  try {
    await request(`/v1/admin/users/${user.id}`, { method: "PATCH", json: { disabled: true } });
    await loadUsersPanel();
    consoleAlert(t("users.disabled", { name: user.username }), "ok");
  } catch (err) { showError(err); }
}

async function enableUser(user) {
  try {
    await request(`/v1/admin/users/${user.id}`, { method: "PATCH", json: { disabled: false } });
    await loadUsersPanel();
    consoleAlert(t("users.enabled", { name: user.username }), "ok");
  } catch (err) { showError(err); }
}

// --- keys -------------------------------------------------------------------------------------

async function loadModelList() {
  state.models = (await request("/v1/models")).data;
}

// The last day each key was used, from the daily rollups (the key objects carry no timestamp).
async function loadLastUsed() {
  try {
    const report = await request(`/v1/usage?all=true&start=${daysAgo(89)}&end=${daysAgo(0)}`);
    state.lastUsed = new Map();
    for (const row of report.data) {
      if (row.key_id === null || !row.requests) continue;
      if (!(state.lastUsed.get(row.key_id) >= row.date)) state.lastUsed.set(row.key_id, row.date);
    }
  } catch (err) {
    // The request log's database may be away (503): the keys are still worth showing.
    if (!(err instanceof ApiError) || err.status < 500) throw err;
  }
}

async function loadKeys() {
  const [keys] = await Promise.all([
    request("/v1/admin/keys?include_revoked=true"), loadUsers(), loadModelList(), loadLastUsed(),
  ]);
  state.keys = keys.data;
  renderKeyForm();
  renderKeys();
}

function renderKeyForm() {
  const select = $("#key-user");
  const chosen = select.value;
  select.replaceChildren(...state.users.filter((u) => u.active).map((u) =>
    el("option", { value: u.id }, `${u.username} (${u.role})`)));
  if (chosen) select.value = chosen;
  const box = $("#key-models");
  const ticked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  // Model ids and routes; an id covers its aliases and versions, so those are not offered apart.
  const names = state.models.filter((m) => !m.alias_of && !m.id.includes("@")).map((m) => m.id);
  box.replaceChildren(...names.map((name) => el("label", {},
    el("input", { type: "checkbox", name: "model", value: name, checked: ticked.has(name) }), name)));
}

function keyName(key) { return key.label || t("keys.unlabelled"); }

function renderKeys() {
  const showAll = $("#keys-revoked").checked;
  const keys = state.keys.filter((k) => showAll || k.status === "active");
  const statusPill = (k) => (k.status === "active" ? pill(t("status.active"))
    : pill(t(`status.${k.status}`), k.status === "revoked" ? "bad" : "warn"));
  fillTable($("#keys-table"), [
    { key: "label", title: t("keys.label") }, { key: "owner", title: t("keys.owner") },
    { key: "prefix", title: t("keys.prefix") }, { key: "created", title: t("keys.created_at") },
    { key: "last_used", title: t("keys.last_used") }, { key: "expires", title: t("keys.expires") },
    { key: "models", title: t("keys.models") }, { key: "limits", title: t("keys.limits") },
    { key: "status", title: t("keys.status") }, { key: "actions", title: t("keys.actions") },
  ], keys.map((k) => ({
    attrs: { "data-key-id": k.id, "data-status": k.status },
    cells: [
      el("strong", {}, keyName(k)), `${k.username} (${k.role})`, el("code", {}, `${k.prefix}…`),
      fmtTime(k.created_at), state.lastUsed.has(k.id) ? fmtDay(state.lastUsed.get(k.id)) : t("common.none"),
      k.expires_at ? fmtTime(k.expires_at) : t("keys.never"),
      el("span", { class: "small" }, k.allowed_models ? k.allowed_models.join(", ") : t("common.all")),
      el("span", { class: "small" }, limitsText(k.limits)), statusPill(k),
      k.status === "revoked" ? "" : el("div", { class: "actions" },
        el("button", { type: "button", class: "secondary", "data-action": "edit-limits", onclick: () => editKeyLimits(k) }, t("keys.edit_limits")),
        el("button", { type: "button", class: "danger", "data-action": "revoke", onclick: () => revokeKey(k) }, t("keys.revoke"))),
    ],
  })), t("keys.none"));
}

async function onCreateKey(event) {
  event.preventDefault();
  const form = event.target;
  const models = [...form.querySelectorAll("input[name=model]:checked")].map((i) => i.value);
  const body = { user_id: Number(form.user_id.value), label: form.label.value.trim(),
                 allowed_models: models.length ? models : null };
  if (form.expiry.value) body.expires_in = Number(form.expiry.value);
  const limits = readLimits(form.querySelector("fieldset.limits"));
  if (limits) body.limits = limits;
  const button = event.submitter;
  button.disabled = true;
  try {
    const created = await request("/v1/admin/keys", { method: "POST", json: body });
    form.reset();
    for (const box of form.querySelectorAll("input[name=model]")) box.checked = false;
    showNewKey(created.key);
    await loadKeys();
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}

// The key exists only in this response: show it once, and forget it when the admin says so.
function showNewKey(key) {
  $("#new-key-value").textContent = key;
  $("#new-key-copied").hidden = true;
  $("#new-key").hidden = false;
  $("#new-key").scrollIntoView({ block: "nearest" });
}

async function copyNewKey() {
  const value = $("#new-key-value").textContent;
  const note = $("#new-key-copied");
  try {
    await navigator.clipboard.writeText(value);
    note.textContent = t("keys.copied");
  } catch {
    // No clipboard (plain http on another host, or blocked): select it for a manual copy.
    const range = document.createRange();
    range.selectNodeContents($("#new-key-value"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    note.textContent = t("keys.copy_failed");
  }
  note.hidden = false;
}

function forgetNewKey() {
  $("#new-key-value").textContent = "";
  $("#new-key").hidden = true;
}

async function revokeKey(key) {
  if (!await confirmAction(t("keys.revoke_confirm", { label: keyName(key), prefix: key.prefix }), t("keys.revoke"))) return;
  try {
    await request(`/v1/admin/keys/${key.id}`, { method: "DELETE" });
    await loadKeys();
    consoleAlert(t("keys.revoked", { label: keyName(key) }), "ok");
  } catch (err) { showError(err); }
}

function editKeyLimits(key) {
  const dialog = $("#limits-dialog");
  const form = $("#limits-form");
  $("#limits-title").textContent = t("keys.limits_title", { label: keyName(key) });
  writeLimits(form.querySelector("fieldset.limits"), key.limits);
  form.onsubmit = async (event) => {
    if (event.submitter?.value !== "save") return;  // cancel: the dialog closes itself
    event.preventDefault();
    const limits = readLimits(form.querySelector("fieldset.limits"));
    try {
      await request(`/v1/admin/keys/${key.id}`, { method: "PATCH", json: { limits } });
      dialog.close();
      await loadKeys();
      consoleAlert(t("keys.limits_saved", { label: keyName(key) }), "ok");
    } catch (err) {
      dialog.close();
      showError(err);
    }
  };
  dialog.showModal();
}

// --- usage ------------------------------------------------------------------------------------

function setRange(days) {
  $("#usage-start").value = daysAgo(days - 1);
  $("#usage-end").value = daysAgo(0);
}

function usageValue(row, metric) {
  return metric === "tokens" ? row.prompt_tokens + row.completion_tokens : row[metric];
}

async function loadUsage() {
  const start = $("#usage-start").value, end = $("#usage-end").value;
  if (start > end) { consoleAlert(t("usage.bad_range")); return; }
  const [report, keys] = await Promise.all([
    request(`/v1/usage?all=true&start=${start}&end=${end}`), request("/v1/admin/keys?include_revoked=true"), loadUsers(),
  ]);
  state.keys = keys.data;
  state.usage = report;
  renderUsage();
}

function usageGroupName(row, group) {
  if (group === "model") return row.model ?? t("usage.no_model");
  if (row.key_id === null) {
    // Requests made with a sign-in token count for the user, with no key.
    const user = state.users.find((u) => u.id === row.user_id);
    return user ? t("usage.signed_in", { name: user.username }) : t("usage.no_key");
  }
  const key = state.keys.find((k) => k.id === row.key_id);
  return key ? t("usage.key_name", { label: keyName(key), prefix: key.prefix }) : t("usage.key_id", { id: row.key_id });
}

function renderUsage() {
  const report = state.usage;
  if (!report) return;
  const group = $("#usage-group").value, metric = $("#usage-metric").value;
  const days = [];
  for (let d = new Date(`${report.start}T00:00:00Z`); isoDay(d) <= report.end; d = new Date(d.getTime() + 86400_000)) days.push(isoDay(d));
  const index = new Map(days.map((d, i) => [d, i]));
  const groups = new Map();  // name -> {values per day, totals}
  for (const row of report.data) {
    const name = usageGroupName(row, group);
    if (!groups.has(name)) {
      groups.set(name, { name, values: days.map(() => 0), requests: 0, errors: 0, tokens: 0, audio_seconds: 0, images: 0, latency: 0 });
    }
    const g = groups.get(name);
    g.values[index.get(row.date)] += usageValue(row, metric);
    g.requests += row.requests; g.errors += row.errors; g.tokens += row.prompt_tokens + row.completion_tokens;
    g.audio_seconds += row.audio_seconds; g.images += row.images; g.latency += row.mean_latency_ms * row.requests;
  }
  const ranked = [...groups.values()].sort((a, b) => b.values.reduce((s, v) => s + v, 0) - a.values.reduce((s, v) => s + v, 0)
    || b.requests - a.requests);
  // Seven series and "Other": more colours than that cannot be told apart.
  const shown = ranked.slice(0, 7).map((g, i) => ({ name: g.name, values: g.values, color: PALETTE[i] }));
  if (ranked.length > 7) {
    shown.push({ name: t("usage.other"), color: PALETTE[7],
                 values: days.map((_, i) => ranked.slice(7).reduce((s, g) => s + g.values[i], 0)) });
  }
  const metricName = t(`metric.${metric}`);
  const title = t("usage.chart_title", { metric: metricName, start: fmtDay(report.start), end: fmtDay(report.end) });
  $("#usage-chart-title").textContent = title;
  const digits = metric === "audio_seconds" ? 1 : 0;
  $("#usage-chart").replaceChildren(stackedBars({
    labels: days.map(fmtDay), series: shown, title, format: (v) => fmtNumber(v, digits), empty: t("usage.empty"),
    width: chartWidth($("#usage-chart")),
  }));
  $("#usage-legend").replaceChildren(...shown.filter((s) => s.values.some((v) => v > 0)).map((s) =>
    el("span", { style: `--swatch:${s.color}` }, s.name)));
  fillTable($("#usage-table"), [
    { key: "name", title: t(group === "model" ? "usage.by_model" : "usage.by_key") },
    { key: "requests", title: t("metric.requests"), num: true }, { key: "errors", title: t("metric.errors"), num: true },
    { key: "tokens", title: t("metric.tokens"), num: true }, { key: "audio_seconds", title: t("metric.audio_seconds"), num: true },
    { key: "images", title: t("metric.images"), num: true }, { key: "latency", title: t("usage.mean_latency"), num: true },
  ], [...groups.values()].sort((a, b) => b.requests - a.requests).map((g) => ({
    attrs: { "data-group": g.name },
    cells: [g.name, fmtNumber(g.requests), fmtNumber(g.errors), fmtNumber(g.tokens), fmtNumber(g.audio_seconds, 1),
      fmtNumber(g.images), g.requests ? `${fmtNumber(g.latency / g.requests, 1)} ms` : t("common.none")],
  })), t("usage.empty"));
  $("#usage-truncated").hidden = !report.truncated;
}

// --- models -----------------------------------------------------------------------------------

async function readiness() {
  // 503 while start-up models load is an answer, not a failure: read its body either way.
  try {
    const response = await fetch("/health/ready");
    return await response.json();
  } catch {
    return null;
  }
}

function reasonText(reason) {
  const key = `reason.${reason}`;
  return t(key) === key ? reason : t(key);
}

// /health/ready's words for a start-up model ("loaded", "standby (idle)", "loading"...), translated.
function readinessText(text) {
  const standby = /^standby \((\w+)\)$/.exec(text);
  if (standby) return t("state.standby", { reason: reasonText(standby[1]) });
  const key = `state.${text}`;
  return t(key) === key ? text : t(key);
}

function modelState(m) {
  const life = m.lifecycle || { state: m.state };
  if (life.state === "installed" && STANDBY.has(life.reason)) {
    return { key: "standby", text: t("state.standby", { reason: reasonText(life.reason) }), kind: "warn" };
  }
  if (life.state === "loaded") return { key: "loaded", text: t("state.loaded"), kind: "" };
  if (life.state === "failed") return { key: "failed", text: t("state.failed"), kind: "bad" };
  if (life.state === "installed") return { key: "installed", text: t("state.installed"), kind: "warn" };
  return { key: life.state, text: t(`state.${life.state}`), kind: "warn" };
}

async function loadModels() {
  const [, ready] = await Promise.all([loadModelList(), readiness()]);
  const box = $("#readiness");
  box.replaceChildren(ready ? pill(t(ready.status === "ready" ? "models.ready" : "models.not_ready"), ready.status === "ready" ? "" : "warn") : "");
  const startup = ready?.models || {};
  const models = state.models.filter((m) => !m.alias_of && !m.route);
  // A load or unload started elsewhere (or by the policy) is followed until it settles.
  clearTimeout(state.modelsTimer);
  if (models.some((m) => ["loading", "unloading"].includes(m.lifecycle?.state)) && state.tab === "models") {
    state.modelsTimer = setTimeout(() => { if (state.tab === "models") loadModels().catch(showError); }, 2000);
  }
  fillTable($("#models-table"), [
    { key: "model", title: t("models.model") }, { key: "state", title: t("models.state") },
    { key: "memory", title: t("models.memory"), num: true }, { key: "calls", title: t("models.calls"), num: true },
    { key: "last_used", title: t("models.last_used") }, { key: "readiness", title: t("models.readiness") },
    { key: "actions", title: "" },
  ], models.map((m) => {
    const life = m.lifecycle || {};
    const s = modelState(m);
    const loaded = s.key === "loaded";
    const action = loaded ? "unload" : "load";
    const canAct = !["not_installed", "loading", "unloading"].includes(s.key);
    return {
      attrs: { "data-model": m.id, "data-state": s.key },
      cells: [
        el("div", {}, el("strong", {}, m.id), el("div", { class: "muted small" }, `${m.tasks.join(", ")} · ${m.runtime}`)),
        el("div", {}, pill(s.text, s.kind), life.pinned ? [" ", pill(t("state.pinned"))] : null,
          s.key === "failed" && life.reason ? el("div", { class: "small muted" }, life.reason) : null),
        life.memory_mb !== null && life.memory_mb !== undefined ? `${fmtNumber(life.memory_mb, 1)} MB` : t("common.none"),
        `${fmtNumber(life.in_flight ?? 0)} / ${fmtNumber(life.queued ?? 0)}`,
        life.last_used ? fmtTime(life.last_used) : t("common.none"),
        m.id in startup ? `${t("models.startup")}: ${readinessText(startup[m.id])}` : t("models.on_demand"),
        canAct ? el("button", { type: "button", class: loaded ? "secondary" : "", "data-action": action,
                                onclick: (e) => modelAction(m.id, action, e.currentTarget) }, t(`models.${action}`)) : "",
      ],
    };
  }));
}

async function modelAction(id, action, button) {
  button.disabled = true;
  button.textContent = t(action === "load" ? "models.loading" : "models.unloading");
  try {
    await request(`/v2/repository/models/${encodeURIComponent(id)}/${action}`, { method: "POST" });
    await loadModels();
    consoleAlert(t(action === "load" ? "models.loaded_ok" : "models.unloaded_ok", { model: id }), "ok");
  } catch (err) {
    showError(err);
    await loadModels().catch(() => null);
  }
}

// --- live metrics -----------------------------------------------------------------------------

// Scrapes and probes are not traffic: leave them out of the request figures.
const traffic = (labels) => labels.route !== "/metrics" && !labels.route?.startsWith("/health") && !labels.route?.startsWith("/v2/health");

function startPolling() {
  if (state.timer) return;
  poll();
  state.timer = setInterval(() => { if (!document.hidden) poll(); }, POLL_MS);
}

function stopPolling() {
  clearInterval(state.timer);
  state.timer = null;
}

async function poll() {
  if (state.polling) return;
  state.polling = true;
  try {
    const text = await request("/metrics", { auth: false });
    const now = { at: performance.now(), samples: parseMetrics(text) };
    renderLive(now, state.previous);
    state.previous = now;
    if (state.pollFailed) consoleAlert("");  // the server answers again
    state.pollFailed = false;
    $("#live-updated").textContent = t("live.updated", { time: new Date().toLocaleTimeString(locale()) });
  } catch (err) {
    state.pollFailed = true;
    consoleAlert(t("live.failed", { error: describeError(err) }));
  } finally {
    state.polling = false;
  }
}

function tile(key, label, value, note = "") {
  return el("div", { class: "tile", "data-tile": key },
    el("div", { class: "value" }, value), el("div", { class: "label" }, label), note ? el("div", { class: "muted small" }, note) : null);
}

function renderLive(now, before) {
  const s = now.samples;
  const requests = total(s, "kaset_requests_total", traffic) ?? 0;
  const errors = total(s, "kaset_requests_total", (l) => traffic(l) && Number(l.status) >= 400) ?? 0;
  let rate = null;
  let latency = buckets(s, "kaset_request_duration_seconds", traffic);
  let note = "";
  if (before) {
    const seconds = (now.at - before.at) / 1000;
    rate = Math.max(0, requests - (total(before.samples, "kaset_requests_total", traffic) ?? 0)) / seconds;
    const recent = bucketDelta(latency, buckets(before.samples, "kaset_request_duration_seconds", traffic));
    // Over the last few seconds when there was traffic, else since the start.
    if (recent.length && recent.at(-1)[1] > 0) latency = recent; else note = t("live.idle");
    state.history.push(rate);
    if (state.history.length > HISTORY) state.history.shift();
  }
  const p50 = quantile(0.5, latency), p95 = quantile(0.95, latency);
  // The scrape itself is one of the requests in flight when the gauge is read.
  const inFlight = Math.max(0, (total(s, "kaset_requests_in_flight") ?? 1) - 1);
  const budget = total(s, "kaset_model_memory_budget_bytes");
  const modelMemory = total(s, "kaset_model_memory_estimate_bytes");
  $("#live-tiles").replaceChildren(
    tile("rate", t("live.rate"), rate === null ? t("common.none") : fmtNumber(rate, 2)),
    tile("requests", t("live.requests"), fmtNumber(requests)),
    tile("errors", t("live.errors"), fmtNumber(errors)),
    tile("latency", t("live.latency"), p50 === null ? t("common.none") : `${fmtSeconds(p50)} / ${fmtSeconds(p95)}`, note),
    tile("in_flight", t("live.in_flight"), fmtNumber(inFlight)),
    tile("queue", t("live.queue"), fmtNumber(total(s, "kaset_model_queue_depth") ?? 0)),
    tile("loaded", t("live.loaded"), fmtNumber(total(s, "kaset_models_loaded"))),
    tile("model_memory", t("live.model_memory"), fmtBytes(modelMemory), budget ? `/ ${fmtBytes(budget)}` : ""),
    tile("process_memory", t("live.process_memory"), fmtBytes(total(s, "process_resident_memory_bytes"))),
    tile("rejections", t("live.rejections"), fmtNumber(total(s, "kaset_limit_rejections_total") ?? 0)),
    tile("tokens", t("live.tokens"), fmtNumber(total(s, "kaset_tokens_total") ?? 0)),
    tile("audio", t("live.audio"), fmtNumber(total(s, "kaset_audio_seconds_total") ?? 0, 1)),
  );
  $("#live-chart").replaceChildren(lineChart({ points: state.history, title: t("live.rate_chart"), capacity: HISTORY,
                                               format: (v) => fmtNumber(v, 2), width: chartWidth($("#live-chart")),
                                               height: 140 }));
  const inflight = byLabel(s, "kaset_model_in_flight", "model");
  const queued = byLabel(s, "kaset_model_queue_depth", "model");
  const maxQueue = byLabel(s, "kaset_model_max_queue", "model");
  const memory = byLabel(s, "kaset_model_memory_estimate_bytes", "model");
  const callSum = byLabel(s, "kaset_inference_seconds_sum", "model");
  const callCount = byLabel(s, "kaset_inference_seconds_count", "model");
  const names = [...new Set([...inflight.keys(), ...memory.keys()])].sort();
  fillTable($("#live-models"), [
    { key: "model", title: t("live.model") }, { key: "calls", title: t("live.calls"), num: true },
    { key: "max_queue", title: t("live.max_queue"), num: true }, { key: "inference", title: t("live.inference"), num: true },
    { key: "memory", title: t("live.memory"), num: true },
  ], names.map((name) => ({
    attrs: { "data-model": name },
    cells: [name, `${fmtNumber(inflight.get(name) ?? 0)} / ${fmtNumber(queued.get(name) ?? 0)}`, fmtNumber(maxQueue.get(name)),
      callCount.get(name) ? fmtSeconds(callSum.get(name) / callCount.get(name)) : t("common.none"), fmtBytes(memory.get(name))],
  })));
}

// --- start ------------------------------------------------------------------------------------

function wire() {
  $("#signin-form").addEventListener("submit", onPasswordSignIn);
  $("#key-form").addEventListener("submit", onKeySignIn);
  $("#sign-out").addEventListener("click", () => backToSignIn(Object.assign(() => t("admin.signed_out"), { kind: "notice" })));
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.addEventListener("click", () => { location.hash = button.dataset.tab; });
  }
  window.addEventListener("hashchange", () => {
    const name = location.hash.slice(1);
    if (TABS.includes(name) && !$("#console").hidden) selectTab(name);
  });
  $("#key-create").addEventListener("submit", onCreateKey);
  $("#new-key-copy").addEventListener("click", copyNewKey);
  $("#new-key-done").addEventListener("click", forgetNewKey);
  $("#keys-revoked").addEventListener("change", renderKeys);
  $("#user-create").addEventListener("submit", onCreateUser);
  $("#users-disabled").addEventListener("change", renderUsers);
  $("#usage-form").addEventListener("submit", (e) => { e.preventDefault(); loadUsage().catch(showError); });
  $("#usage-range").addEventListener("change", (e) => {
    if (e.target.value !== "custom") { setRange(Number(e.target.value)); loadUsage().catch(showError); }
  });
  for (const id of ["#usage-start", "#usage-end"]) {
    $(id).addEventListener("change", () => { $("#usage-range").value = "custom"; });
  }
  $("#usage-group").addEventListener("change", renderUsage);
  $("#usage-metric").addEventListener("change", renderUsage);
  // Any call refused for the credential itself (expired, revoked, garbage): back to sign-in, saying why.
  document.addEventListener("kaset:unauthorized", (event) => {
    const pasted = state.pastedKey && ["invalid_api_key", "api_key_revoked", "api_key_expired"].includes(event.detail.code);
    backToSignIn(pasted ? () => t("admin.bad_key") : () => describeError(event.detail));
  });
  // Text drawn by code follows the language switch too.
  document.addEventListener("kaset:language", () => {
    if ($("#console").hidden) { renderSignInMessage(); return; }
    selectTab(state.tab);
    if (state.tab === "overview") poll();
  });
}

applyTranslations();
wireLanguageSwitch();
buildLimitFields();
setRange(7);
wire();
enter();
