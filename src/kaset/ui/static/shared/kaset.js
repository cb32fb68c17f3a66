// Kaset's shared front-end library: language (Thai/English), sign-in, API calls with errors a
// person can act on, and microphone recording. Plain ES modules, no build step, no CDN: the web
// app must work offline on a farm's phone.

// --- language ---------------------------------------------------------------------------------

const LANG_KEY = "kaset.lang";
const messages = { en: {}, th: {} };

// Messages every page shares; pages add their own with addMessages().
addMessages({
  en: {
    "lang.switch": "ภาษาไทย",
    "nav.home": "Home", "nav.farmer": "Crop Guardian", "nav.playground": "Playground", "nav.admin": "Admin",
    "auth.title": "Sign in", "auth.username": "Username", "auth.password": "Password",
    "auth.key": "Or paste an API key", "auth.submit": "Sign in", "auth.signout": "Sign out",
    "auth.signedin": "Signed in as {name}", "auth.needed": "Sign in to continue.",
    "err.network": "Cannot reach the Kaset server. Check the connection and try again.",
    "err.auth": "Your sign-in is not valid any more. Please sign in again.",
    "err.expired": "Your sign-in has expired. Please sign in again.",
    "err.credentials": "Wrong username or password.",
    "err.role": "Your account may not do this (it needs the {role} role).",
    "err.quota": "This key has used up its allowance. Try again in {wait}.",
    "err.quota_day": "This key has used up today's allowance. It resets tomorrow.",
    "err.busy": "The server is busy. Try again in {wait}.",
    "err.too_large": "That file is too large. Send a smaller or shorter one.",
    "err.format": "That file type is not supported.",
    "err.unavailable": "This service is not available on the server right now.",
    "err.no_speech": "No speech was heard. Hold the button while you speak, close to the microphone.",
    "err.no_voice": "The answer has no spoken version: no voice for this language is installed.",
    "err.bad_audio": "The recording could not be read. Please record again.",
    "err.bad_image": "The photo could not be read. Take or choose another photo (JPEG or PNG).",
    "err.mic_denied": "The microphone is blocked. Allow microphone access in the browser settings, or type your question.",
    "err.mic_missing": "No microphone was found on this device. Type your question instead.",
    "err.recording_empty": "The recording is empty. Hold the button down while you speak.",
    "err.stream_lost": "The connection dropped while answering. Please ask again.",
    "err.server": "Something went wrong on the server. Try again.",
    "unit.seconds": "{n} s", "unit.minutes": "{n} min",
  },
  th: {
    "lang.switch": "English",
    "nav.home": "หน้าแรก", "nav.farmer": "หมอพืช", "nav.playground": "ทดลองใช้", "nav.admin": "ผู้ดูแล",
    "auth.title": "เข้าสู่ระบบ", "auth.username": "ชื่อผู้ใช้", "auth.password": "รหัสผ่าน",
    "auth.key": "หรือวาง API key", "auth.submit": "เข้าสู่ระบบ", "auth.signout": "ออกจากระบบ",
    "auth.signedin": "เข้าสู่ระบบในชื่อ {name}", "auth.needed": "กรุณาเข้าสู่ระบบก่อน",
    "err.network": "ติดต่อเซิร์ฟเวอร์ Kaset ไม่ได้ ตรวจสอบการเชื่อมต่อแล้วลองใหม่",
    "err.auth": "การเข้าสู่ระบบใช้ไม่ได้แล้ว กรุณาเข้าสู่ระบบใหม่",
    "err.expired": "การเข้าสู่ระบบหมดอายุแล้ว กรุณาเข้าสู่ระบบใหม่",
    "err.credentials": "ชื่อผู้ใช้หรือรหัสผ่านไม่ถูกต้อง",
    "err.role": "บัญชีนี้ทำรายการนี้ไม่ได้ (ต้องมีสิทธิ์ {role})",
    "err.quota": "คีย์นี้ใช้โควตาหมดแล้ว ลองใหม่ในอีก {wait}",
    "err.quota_day": "คีย์นี้ใช้โควตาของวันนี้หมดแล้ว จะเริ่มใหม่พรุ่งนี้",
    "err.busy": "เซิร์ฟเวอร์กำลังยุ่ง ลองใหม่ในอีก {wait}",
    "err.too_large": "ไฟล์ใหญ่เกินไป กรุณาส่งไฟล์ที่เล็กหรือสั้นกว่านี้",
    "err.format": "ไม่รองรับไฟล์ประเภทนี้",
    "err.unavailable": "บริการนี้ยังไม่พร้อมใช้งานบนเซิร์ฟเวอร์",
    "err.no_speech": "ไม่ได้ยินเสียงพูด กรุณากดปุ่มค้างไว้ขณะพูดใกล้ไมโครโฟน",
    "err.no_voice": "คำตอบนี้ไม่มีเสียงอ่าน เพราะยังไม่ได้ติดตั้งเสียงสำหรับภาษานี้",
    "err.bad_audio": "อ่านไฟล์เสียงไม่ได้ กรุณาอัดเสียงใหม่",
    "err.bad_image": "อ่านรูปภาพไม่ได้ กรุณาถ่ายหรือเลือกรูปใหม่ (JPEG หรือ PNG)",
    "err.mic_denied": "ไมโครโฟนถูกปิดกั้น กรุณาอนุญาตการใช้ไมโครโฟนในการตั้งค่าเบราว์เซอร์ หรือพิมพ์คำถามแทน",
    "err.mic_missing": "ไม่พบไมโครโฟนในอุปกรณ์นี้ กรุณาพิมพ์คำถามแทน",
    "err.recording_empty": "ไม่มีเสียงในการบันทึก กรุณากดปุ่มค้างไว้ขณะพูด",
    "err.stream_lost": "การเชื่อมต่อขาดระหว่างตอบ กรุณาถามใหม่",
    "err.server": "เกิดข้อผิดพลาดที่เซิร์ฟเวอร์ กรุณาลองใหม่",
    "unit.seconds": "{n} วินาที", "unit.minutes": "{n} นาที",
  },
});

export function addMessages(byLanguage) {
  for (const [lang, table] of Object.entries(byLanguage)) Object.assign(messages[lang] ??= {}, table);
}

export function language() {
  const saved = localStorage.getItem(LANG_KEY);
  if (saved === "th" || saved === "en") return saved;
  return (navigator.language || "").toLowerCase().startsWith("th") ? "th" : "en";
}

export function setLanguage(lang) {
  localStorage.setItem(LANG_KEY, lang);
  applyTranslations();
  document.dispatchEvent(new CustomEvent("kaset:language", { detail: lang }));
}

export function t(key, vars = {}) {
  const lang = language();
  const text = messages[lang]?.[key] ?? messages.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : `{${name}}`));
}

// Fills every [data-i18n] element's text and [data-i18n-placeholder]/[data-i18n-label] attributes.
export function applyTranslations(root = document) {
  document.documentElement.lang = language();
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll("[data-i18n-label]")) el.setAttribute("aria-label", t(el.dataset.i18nLabel));
}

// A button with [data-action="switch-language"] toggles Thai/English.
export function wireLanguageSwitch(root = document) {
  for (const button of root.querySelectorAll('[data-action="switch-language"]')) {
    button.addEventListener("click", () => setLanguage(language() === "th" ? "en" : "th"));
  }
}

// --- sign-in ----------------------------------------------------------------------------------

const AUTH_KEY = "kaset.auth";

// {kind: "key", key} or {kind: "token", access, refresh, username, role}
export function credential() {
  try { return JSON.parse(localStorage.getItem(AUTH_KEY) || "null"); } catch { return null; }
}

export function signedIn() { return credential() !== null; }

export function signOut() {
  const c = credential();
  if (c?.kind === "token" && c.refresh) {
    // Ends the sign-in on the server too (its refresh token stops working). Not awaited: signing
    // out must work offline; keepalive lets the request outlive a page that is closing.
    fetch("/v1/auth/logout", { method: "POST", keepalive: true,
      body: new URLSearchParams({ refresh_token: c.refresh }) }).catch(() => {});
  }
  localStorage.removeItem(AUTH_KEY);
  document.dispatchEvent(new CustomEvent("kaset:signedout"));
}

export function useApiKey(key) {
  localStorage.setItem(AUTH_KEY, JSON.stringify({ kind: "key", key: key.trim() }));
}

export async function signIn(username, password) {
  const body = new URLSearchParams({ grant_type: "password", username, password });
  const data = await request("/v1/auth/token", { method: "POST", body, auth: false });
  const claims = tokenClaims(data.access_token);
  localStorage.setItem(AUTH_KEY, JSON.stringify({
    kind: "token", access: data.access_token, refresh: data.refresh_token,
    username: claims.name ?? username, role: claims.role ?? null,
  }));
  return data;
}

// The access token's claims (name, role, exp); the server checks the signature, not us.
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0)));
    return JSON.parse(json);
  } catch {
    return {};
  }
}

// The bearer credential: an API key, or the current access token.
export function bearer() {
  const c = credential();
  if (!c) return null;
  return c.kind === "key" ? c.key : c.access;
}

async function refreshToken() {
  const c = credential();
  if (!c || c.kind !== "token" || !c.refresh) return false;
  try {
    const body = new URLSearchParams({ grant_type: "refresh_token", refresh_token: c.refresh });
    const data = await request("/v1/auth/refresh", { method: "POST", body, auth: false, retry: false });
    localStorage.setItem(AUTH_KEY, JSON.stringify({ ...c, access: data.access_token,
      refresh: data.refresh_token ?? c.refresh }));
    return true;
  } catch {
    return false;
  }
}

// --- API calls --------------------------------------------------------------------------------

// An error from the API (or the network), with the OpenAI envelope's fields.
export class ApiError extends Error {
  constructor(status, { message, type, code, param } = {}, retryAfter = null) {
    super(message || `HTTP ${status}`);
    this.status = status; this.type = type; this.code = code; this.param = param; this.retryAfter = retryAfter;
  }
}

// fetch() with the stored credential, JSON or form bodies, a refresh when an access token has
// expired, and failures as ApiError. Returns parsed JSON, or the Response when raw is true.
export async function request(path, { method = "GET", json, body, auth = true, raw = false, retry = true,
                                      signal, headers = {} } = {}) {
  const init = { method, headers: { ...headers }, signal };
  if (json !== undefined) { init.body = JSON.stringify(json); init.headers["content-type"] = "application/json"; }
  else if (body !== undefined) init.body = body;
  const token = auth ? bearer() : null;
  if (token) init.headers.authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { message: String(err), code: "network_error" });
  }
  if (!response.ok) {
    let error = {};
    try { error = (await response.json()).error ?? {}; } catch { /* not JSON */ }
    if (response.status === 401 && auth && retry && error.code === "token_expired" && await refreshToken()) {
      return request(path, { method, json, body, auth, raw, retry: false, signal, headers });
    }
    const retryAfter = Number(response.headers.get("retry-after")) || null;
    const failure = new ApiError(response.status, error, retryAfter);
    if (response.status === 401 && auth) document.dispatchEvent(new CustomEvent("kaset:unauthorized", { detail: failure }));
    throw failure;
  }
  if (raw) return response;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

function waitText(seconds) {
  if (!seconds) return t("unit.seconds", { n: 30 });
  return seconds < 90 ? t("unit.seconds", { n: Math.ceil(seconds) }) : t("unit.minutes", { n: Math.ceil(seconds / 60) });
}

// A message for a person, in their language. `context` ("audio" | "image") picks the wording of
// a 400 about the uploaded file; the server's own message is the fallback.
export function describeError(err, context = "") {
  if (!(err instanceof ApiError)) return err?.message || t("err.server");
  const code = err.code || "";
  if (err.status === 0) return t("err.network");
  if (code === "token_expired") return t("err.expired");
  if (code === "invalid_credentials") return t("err.credentials");
  if (err.status === 401) return t("err.auth");
  if (code === "insufficient_role") return t("err.role", { role: "admin" });
  if (code === "daily_quota_exceeded") return t("err.quota_day");
  if (err.status === 429 && code === "model_overloaded") return t("err.busy", { wait: waitText(err.retryAfter) });
  if (err.status === 429) return t("err.quota", { wait: waitText(err.retryAfter) });
  if (code === "no_speech") return t("err.no_speech");
  if (code === "no_voice") return t("err.no_voice");
  if (err.status === 413) return t("err.too_large");
  if (err.status === 415) return t("err.format");
  if (err.status === 400 && context === "audio" && err.param !== "question") return t("err.bad_audio");
  if (err.status === 400 && context === "image") return t("err.bad_image");
  if (err.status === 503) return t("err.unavailable");
  if (err.status >= 500) return t("err.server");
  return err.message;
}

// --- WebSocket --------------------------------------------------------------------------------

// Browsers cannot set headers on a WebSocket: the credential travels as a subprotocol,
// "kaset-key.<credential>", next to "kaset.v1" (as OpenAI's realtime API does).
export function openSocket(path) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const protocols = ["kaset.v1"];
  const token = bearer();
  if (token) protocols.push(`kaset-key.${token}`);
  return new WebSocket(url, protocols);
}

// --- microphone -------------------------------------------------------------------------------

// Records 16 kHz mono PCM from the microphone. onChunk receives Int16Array pieces as they come
// (for streaming); stop() resolves to a WAV Blob of the whole recording.
export class Recorder {
  constructor({ onChunk = null, sampleRate = 16000 } = {}) {
    this.onChunk = onChunk; this.sampleRate = sampleRate; this.pieces = [];
  }

  async start() {
    if (!navigator.mediaDevices?.getUserMedia) throw new MicError("mic_missing");
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
    } catch (err) {
      throw new MicError(err?.name === "NotFoundError" ? "mic_missing" : "mic_denied");
    }
    this.context = new AudioContext();
    const source = this.context.createMediaStreamSource(this.stream);
    // An AudioWorklet (mic-worklet.js, next to this module) hands the samples over in batches.
    await this.context.audioWorklet.addModule(new URL("mic-worklet.js", import.meta.url));
    this.node = new AudioWorkletNode(this.context, "kaset-mic-tap", { numberOfInputs: 1, numberOfOutputs: 0,
                                                                      channelCount: 1 });
    const ratio = this.context.sampleRate / this.sampleRate;
    this.node.port.onmessage = (event) => {
      const { samples: input, last } = event.data;
      if (last) this.flushed?.();
      // Each output sample averages the input samples it spans: a box filter against the
      // aliasing that picking every Nth sample would fold into the speech band.
      const out = new Int16Array(Math.floor(input.length / ratio));
      for (let i = 0; i < out.length; i++) {
        const from = Math.floor(i * ratio), to = Math.max(from + 1, Math.floor((i + 1) * ratio));
        let sum = 0;
        for (let j = from; j < to; j++) sum += input[j];
        const s = Math.max(-1, Math.min(1, sum / (to - from)));
        out[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
      }
      this.pieces.push(out);
      if (this.onChunk) this.onChunk(out);
    };
    source.connect(this.node);
  }

  samples() { return this.pieces.reduce((n, p) => n + p.length, 0); }

  async stop() {
    if (this.node) {
      // The last partial batch: asked for, and waited on (briefly) before the node goes.
      const flushed = new Promise((resolve) => { this.flushed = resolve; setTimeout(resolve, 200); });
      this.node.port.postMessage("flush");
      await flushed;
      this.node.disconnect();
    }
    this.stream?.getTracks().forEach((track) => track.stop());
    await this.context?.close();
    if (this.samples() < this.sampleRate * 0.3) throw new MicError("recording_empty");
    return wavBlob(this.pieces, this.sampleRate);
  }
}

export class MicError extends Error {
  constructor(code) { super(t(`err.${code}`)); this.code = code; }
}

export function wavBlob(pieces, sampleRate) {
  const total = pieces.reduce((n, p) => n + p.length, 0);
  const buffer = new ArrayBuffer(44 + total * 2);
  const view = new DataView(buffer);
  const ascii = (offset, text) => { for (let i = 0; i < text.length; i++) view.setUint8(offset + i, text.charCodeAt(i)); };
  ascii(0, "RIFF"); view.setUint32(4, 36 + total * 2, true); ascii(8, "WAVE"); ascii(12, "fmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, sampleRate, true); view.setUint32(28, sampleRate * 2, true);
  view.setUint16(32, 2, true); view.setUint16(34, 16, true); ascii(36, "data"); view.setUint32(40, total * 2, true);
  let offset = 44;
  for (const piece of pieces) { new Int16Array(buffer, offset, piece.length).set(piece); offset += piece.length * 2; }
  return new Blob([buffer], { type: "audio/wav" });
}

export function base64ToBlob(data, type) {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

// --- small DOM helpers ------------------------------------------------------------------------

export function $(selector, root = document) { return root.querySelector(selector); }

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// Shows `message` in the page's [role=alert] area (or `target`), as an error or a notice.
export function notify(message, { kind = "error", target = null } = {}) {
  const box = target || document.querySelector("[data-role='alert']");
  if (!box) return;
  box.textContent = message;
  box.dataset.kind = kind;
  box.hidden = !message;
}
