// The playground: each tab calls the public API with the signed-in credential and shows the
// curl and Python (openai SDK) code for exactly the request it made.
import {
  $, addMessages, ApiError, applyTranslations, bearer, credential, describeError, el, language, openSocket,
  Recorder, request, signIn, signOut, t, useApiKey, wireLanguageSwitch,
} from "/static/kaset.js";
import {
  chatSnippets, classifyBody, classifySnippets, describeSnippets, KEY_VAR, maskKey, speechSnippets,
  transcribeSnippets, translateSnippets,
} from "./snippets.js";

addMessages({
  en: {
    "tab.transcribe": "Transcribe", "tab.speak": "Speak", "tab.translate": "Translate", "tab.chat": "Chat",
    "tab.vision": "Vision",
    "pg.signin.why": "The playground calls the API with your account or API key.", "pg.usekey": "Use key",
    "pg.model": "Model", "pg.language": "Language", "pg.result": "Result", "pg.raw": "Raw response",
    "pg.download": "Download", "pg.auto": "Detect automatically",
    "pg.code": "Code", "pg.code.key": "Set {var} to your API key or access token (yours: {key}).",
    "pg.code.preview": "What the button will send. After a request it shows exactly that request.",
    "pg.code.sent": "The request made at {time}.",
    "pg.copy": "Copy", "pg.copied": "Copied ✓", "pg.copy_failed": "Select and copy by hand",
    "pg.meta": "{model} · {ms} ms",
    "pg.tr.intro": "Speech to text: upload a recording or record from the microphone.",
    "pg.tr.format": "Response format", "pg.tr.file": "Audio file (wav, mp3, flac, ogg, webm, m4a)",
    "pg.tr.send": "Transcribe file", "pg.tr.record": "● Record", "pg.tr.stop": "■ Stop and transcribe",
    "pg.tr.listening": "Listening… live transcript", "pg.tr.live_final": "Live transcript (final)",
    "pg.tr.live_off": "No live transcript: {reason} The full transcript follows when you stop.",
    "pg.tr.nofile": "Choose an audio file first, or record.", "pg.tr.empty": "(no speech recognised)",
    "pg.tr.recorded": "Your recording, {s} s.",
    "pg.tr.live_unavailable": "the live transcription service did not answer.",
    "pg.sp.text": "Text", "pg.sp.voice": "Voice", "pg.sp.speed": "Speed", "pg.sp.format": "Format",
    "pg.sp.send": "Speak", "pg.sp.notext": "Type some text to speak.",
    "pg.sp.help.piper": "Voices: joe, or OpenAI's voice names (alloy, nova, …), which all speak as joe.",
    "pg.sp.help.espeak": "Voices are languages: en-us, en-gb, es, fr-fr, de, pt-br, vi, … (Thai is not offered).",
    "pg.sp.help.other": "Leave empty for the model's default voice.",
    "pg.sp.pcm": "pcm is raw 16-bit samples without a header: browsers cannot play it, download it instead.",
    "pg.sp.meta": "{model} · {kb} KB · {ms} ms", "pg.sp.seconds": "{s} s of audio",
    "pg.tl.source": "From", "pg.tl.target": "To", "pg.tl.swap": "Swap languages", "pg.tl.send": "Translate",
    "pg.tl.notext": "Type some text to translate.", "pg.tl.none": "No translation pairs are installed.",
    "pg.ch.max": "Max tokens", "pg.ch.temp": "Temperature", "pg.ch.system": "System prompt",
    "pg.ch.message": "Message", "pg.ch.send": "Send", "pg.ch.stop": "Stop", "pg.ch.clear": "Clear",
    "pg.ch.stopped": " [stopped]", "pg.ch.nomessage": "Type a message first.",
    "pg.ch.meta": "{model} · {tokens} tokens · {rate} tokens/s · first token {first} ms",
    "pg.vi.intro": "Classify a photo (image classifier, top labels with scores) or describe it in words.",
    "pg.vi.file": "Photo (JPEG, PNG, WEBP)", "pg.vi.classifier": "Classifier", "pg.vi.topk": "Labels",
    "pg.vi.language": "Description language", "pg.vi.classify": "Classify", "pg.vi.describe": "Describe",
    "pg.vi.nofile": "Choose a photo first.",
  },
  th: {
    "tab.transcribe": "ถอดเสียง", "tab.speak": "อ่านออกเสียง", "tab.translate": "แปลภาษา", "tab.chat": "แชต",
    "tab.vision": "ภาพ",
    "pg.signin.why": "หน้าทดลองใช้เรียก API ด้วยบัญชีหรือ API key ของคุณ", "pg.usekey": "ใช้คีย์",
    "pg.model": "โมเดล", "pg.language": "ภาษา", "pg.result": "ผลลัพธ์", "pg.raw": "คำตอบดิบ",
    "pg.download": "ดาวน์โหลด", "pg.auto": "ตรวจหาอัตโนมัติ",
    "pg.code": "โค้ด", "pg.code.key": "ตั้งค่า {var} เป็น API key หรือ access token ของคุณ (ของคุณ: {key})",
    "pg.code.preview": "สิ่งที่ปุ่มจะส่ง หลังส่งแล้วจะแสดงคำขอนั้นตรงตามจริง",
    "pg.code.sent": "คำขอที่ส่งเมื่อ {time}",
    "pg.copy": "คัดลอก", "pg.copied": "คัดลอกแล้ว ✓", "pg.copy_failed": "เลือกข้อความแล้วคัดลอกเอง",
    "pg.meta": "{model} · {ms} มิลลิวินาที",
    "pg.tr.intro": "แปลงเสียงพูดเป็นข้อความ: อัปโหลดไฟล์เสียงหรืออัดจากไมโครโฟน",
    "pg.tr.format": "รูปแบบคำตอบ", "pg.tr.file": "ไฟล์เสียง (wav, mp3, flac, ogg, webm, m4a)",
    "pg.tr.send": "ถอดเสียงจากไฟล์", "pg.tr.record": "● อัดเสียง", "pg.tr.stop": "■ หยุดและถอดเสียง",
    "pg.tr.listening": "กำลังฟัง… ข้อความสด", "pg.tr.live_final": "ข้อความสด (สุดท้าย)",
    "pg.tr.live_off": "ไม่มีข้อความสด: {reason} ข้อความทั้งหมดจะแสดงเมื่อหยุดอัด",
    "pg.tr.nofile": "กรุณาเลือกไฟล์เสียงก่อน หรืออัดเสียง", "pg.tr.empty": "(ไม่พบเสียงพูด)",
    "pg.tr.recorded": "เสียงที่อัดไว้ {s} วินาที",
    "pg.tr.live_unavailable": "บริการถอดเสียงสดไม่ตอบสนอง",
    "pg.sp.text": "ข้อความ", "pg.sp.voice": "เสียง", "pg.sp.speed": "ความเร็ว", "pg.sp.format": "รูปแบบไฟล์",
    "pg.sp.send": "อ่านออกเสียง", "pg.sp.notext": "กรุณาพิมพ์ข้อความที่จะอ่าน",
    "pg.sp.help.piper": "เสียง: joe หรือชื่อเสียงของ OpenAI (alloy, nova, …) ซึ่งใช้เสียง joe ทั้งหมด",
    "pg.sp.help.espeak": "เสียงตามภาษา: en-us, en-gb, es, fr-fr, de, pt-br, vi, … (ไม่มีภาษาไทย)",
    "pg.sp.help.other": "เว้นว่างไว้เพื่อใช้เสียงเริ่มต้นของโมเดล",
    "pg.sp.pcm": "pcm เป็นข้อมูลเสียงดิบ 16 บิตไม่มีส่วนหัว เบราว์เซอร์เล่นไม่ได้ กรุณาดาวน์โหลดแทน",
    "pg.sp.meta": "{model} · {kb} KB · {ms} มิลลิวินาที", "pg.sp.seconds": "เสียงยาว {s} วินาที",
    "pg.tl.source": "จาก", "pg.tl.target": "เป็น", "pg.tl.swap": "สลับภาษา", "pg.tl.send": "แปล",
    "pg.tl.notext": "กรุณาพิมพ์ข้อความที่จะแปล", "pg.tl.none": "ยังไม่ได้ติดตั้งคู่ภาษาสำหรับแปล",
    "pg.ch.max": "จำนวนโทเค็นสูงสุด", "pg.ch.temp": "ความสุ่ม (temperature)", "pg.ch.system": "คำสั่งระบบ",
    "pg.ch.message": "ข้อความ", "pg.ch.send": "ส่ง", "pg.ch.stop": "หยุด", "pg.ch.clear": "ล้าง",
    "pg.ch.stopped": " [หยุดแล้ว]", "pg.ch.nomessage": "กรุณาพิมพ์ข้อความก่อน",
    "pg.ch.meta": "{model} · {tokens} โทเค็น · {rate} โทเค็น/วินาที · โทเค็นแรก {first} มิลลิวินาที",
    "pg.vi.intro": "จำแนกภาพ (ป้ายกำกับพร้อมคะแนน) หรือบรรยายภาพเป็นคำพูด",
    "pg.vi.file": "รูปภาพ (JPEG, PNG, WEBP)", "pg.vi.classifier": "โมเดลจำแนกภาพ", "pg.vi.topk": "จำนวนป้ายกำกับ",
    "pg.vi.language": "ภาษาของคำบรรยาย", "pg.vi.classify": "จำแนกภาพ", "pg.vi.describe": "บรรยายภาพ",
    "pg.vi.nofile": "กรุณาเลือกรูปภาพก่อน",
  },
});

const TABS = ["transcribe", "speak", "translate", "chat", "vision"];
const API = `${location.origin}/v1`;
// Languages offered for multilingual speech recognition (whisper detects the rest with "auto").
const SPEECH_LANGUAGES = ["en", "th", "es", "fr", "de", "pt", "zh", "ja", "vi", "id", "ms", "lo", "my", "km"];
// Piper's catalog voices also answer to OpenAI's voice names (docs/api.md): suggested after its own.
const OPENAI_VOICES = ["alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse"];
const AUDIO_TYPES = { mp3: "audio/mpeg", wav: "audio/wav", opus: "audio/ogg", flac: "audio/flac", aac: "audio/aac",
                      pcm: "application/octet-stream" };

const state = { models: [], pairs: [], snippets: {}, voices: {}, started: false };

// --- helpers ----------------------------------------------------------------------------------

function languageName(code) {
  try {
    return new Intl.DisplayNames([language()], { type: "language" }).of(code) || code;
  } catch {
    return code;
  }
}

function panel(tab) { return $(`[data-panel="${tab}"]`); }

// An error in the tab's own alert box: the message in the person's language, and the server's
// own words under it when they add something (this is a developer's playground).
function showError(tab, err, context = "") {
  const box = panel(tab).querySelector("[data-role='tab-alert']");
  const message = describeError(err, context);
  box.replaceChildren(message);
  if (err instanceof ApiError && err.message && err.message !== message && err.status !== 0) {
    box.append(el("span", { class: "detail" }, err.message));
  }
  box.dataset.kind = "error";
  box.hidden = false;
}

function showNotice(tab, message, kind = "notice") {
  const box = panel(tab).querySelector("[data-role='tab-alert']");
  box.replaceChildren(message);
  box.dataset.kind = kind;
  box.hidden = !message;
}

function clearAlert(tab) { showNotice(tab, ""); }

// Runs `work` with `button` disabled and spinning; errors land in the tab's alert box.
async function busy(button, tab, context, work) {
  const label = button.innerHTML;
  button.disabled = true;
  button.prepend(el("span", { class: "spinner", "aria-hidden": "true" }));
  clearAlert(tab);
  try {
    return await work();
  } catch (err) {
    if (err?.name !== "AbortError") showError(tab, err, context);
    return undefined;
  } finally {
    button.innerHTML = label;
    button.disabled = false;
  }
}

function modelsFor(task) {
  return state.models.filter((m) => m.tasks.includes(task) && !m.alias_of)
    // Loaded models first: they answer at once; the rest keep the server's order.
    .sort((a, b) => Number(b.state === "loaded") - Number(a.state === "loaded"));
}

function fillModels(select, task, preferred = []) {
  const keep = select.value;
  const models = modelsFor(task);
  select.replaceChildren(...models.map((m) => el("option", { value: m.id },
    m.aliases?.length ? `${m.id} (${m.aliases.join(", ")})` : m.id)));
  const wanted = [keep, ...preferred].find((id) => models.some((m) => m.id === id));
  if (wanted) select.value = wanted;
}

function model(id) { return state.models.find((m) => m.id === id); }

function fillLanguages(select, codes, { auto = false } = {}) {
  const keep = select.value;
  const options = codes.map((code) => el("option", { value: code }, `${languageName(code)} (${code})`));
  if (auto) options.unshift(el("option", { value: "" }, t("pg.auto")));
  select.replaceChildren(...options);
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

function ms(start) { return Math.round(performance.now() - start); }

function readAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// --- the code card ----------------------------------------------------------------------------

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = t("pg.copied");
  } catch {
    button.textContent = t("pg.copy_failed");
  }
  setTimeout(() => { button.textContent = t("pg.copy"); }, 2000);
}

function setSnippets(tab, snippets, sent) {
  state.snippets[tab] = { ...snippets, sent: sent ? new Date() : null };
  renderCode(tab);
}

function renderCode(tab) {
  const card = $(`[data-code="${tab}"]`);
  const snippets = state.snippets[tab];
  if (!card || !snippets) return;
  const block = (name, lang, text) => {
    const button = el("button", { type: "button", class: "secondary", "data-copy": lang }, t("pg.copy"));
    button.addEventListener("click", () => copy(text, button));
    return el("div", { class: "snippet" },
      el("div", { class: "snippet-head" }, el("strong", {}, name), button),
      el("pre", { "data-snippet": lang }, el("code", {}, text)));
  };
  const c = credential();
  const shown = c?.kind === "key" ? maskKey(c.key) : maskKey(bearer() || "");
  card.dataset.state = snippets.sent ? "sent" : "preview";
  card.replaceChildren(
    el("h2", {}, t("pg.code")),
    el("p", { class: "muted" }, snippets.sent ? t("pg.code.sent", { time: snippets.sent.toLocaleTimeString() })
      : t("pg.code.preview")),
    el("p", { class: "muted" }, t("pg.code.key", { var: KEY_VAR, key: shown })),
    block("curl", "curl", snippets.curl),
    block("Python (openai)", "python", snippets.python),
  );
}

// --- Transcribe -------------------------------------------------------------------------------

const tr = { audio: null, name: "audio.wav", recorder: null, socket: null };

function transcribeFields() {
  return { model: $("#tr-model").value, language: $("#tr-language").value || undefined,
           response_format: $("#tr-format").value };
}

function previewTranscribe() {
  const name = tr.audio ? tr.name : ($("#tr-file").files[0]?.name || "audio.wav");
  setSnippets("transcribe", transcribeSnippets(API, name, transcribeFields()), false);
}

function onTranscribeModel() {
  const m = model($("#tr-model").value);
  const langs = m && !m.languages.includes("multilingual") && m.languages.length ? m.languages : SPEECH_LANGUAGES;
  fillLanguages($("#tr-language"), langs, { auto: true });
  previewTranscribe();
}

async function transcribe(blob, name) {
  const fields = transcribeFields();
  const form = new FormData();
  form.append("file", blob, name);
  for (const [key, value] of Object.entries(fields)) if (value !== undefined) form.append(key, value);
  const start = performance.now();
  $("#tr-text").textContent = ""; $("#tr-raw-box").hidden = true; $("#tr-meta").textContent = "";
  setSnippets("transcribe", transcribeSnippets(API, name, fields), true);
  const response = await request("/v1/audio/transcriptions", { method: "POST", body: form, raw: true });
  const raw = await response.text();
  const json = fields.response_format.includes("json");
  const text = json ? JSON.parse(raw).text : raw;
  $("#tr-text").textContent = text.trim() || t("pg.tr.empty");
  $("#tr-raw").textContent = json ? JSON.stringify(JSON.parse(raw), null, 2) : raw;
  $("#tr-raw-box").hidden = false;
  $("#tr-meta").textContent = t("pg.meta", { model: response.headers.get("x-kaset-model") || fields.model,
                                             ms: ms(start) });
}

async function transcribeFile() {
  const file = $("#tr-file").files[0];
  if (!file) { showNotice("transcribe", t("pg.tr.nofile")); return; }
  tr.audio = file; tr.name = file.name;
  $("#tr-audio").hidden = true;
  await busy($("#tr-send"), "transcribe", "audio", () => transcribe(file, file.name));
}

// The live transcript: the contract's /v1/voice/stream session in "transcribe" mode. It is a
// bonus next to the recording: if it fails, the recording and the final transcript still work.
function openLive() {
  const box = $("#tr-live-box");
  const status = $("#tr-live-state");
  const live = $("#tr-live");
  box.hidden = false; live.textContent = "";
  status.textContent = t("pg.tr.listening"); status.className = "pill warn";
  const pending = [];
  const session = { ready: false, closed: false, send: (chunk) => {
    if (session.closed) return;
    if (session.ready && socket.readyState === WebSocket.OPEN) socket.send(chunk);
    else pending.push(chunk);
  } };
  const socket = openSocket("/v1/voice/stream");
  socket.binaryType = "arraybuffer";
  const off = (reason) => {
    if (session.closed) return;
    session.closed = true;
    status.textContent = t("pg.tr.live_off", { reason }); status.className = "pill bad";
  };
  socket.onopen = () => socket.send(JSON.stringify({ type: "start", mode: "transcribe",
    language: $("#tr-language").value || "auto", voice: null, response_format: "wav", sample_rate: 16000, crop: null }));
  socket.onmessage = (event) => {
    if (typeof event.data !== "string") return;
    let message;
    try { message = JSON.parse(event.data); } catch { return; }
    if (message.type === "ready") {
      session.ready = true;
      while (pending.length) socket.send(pending.shift());
    } else if (message.type === "transcript.partial") {
      live.textContent = message.text;
    } else if (message.type === "transcript.final") {
      live.textContent = message.text;
      status.textContent = t("pg.tr.live_final"); status.className = "pill";
    } else if (message.type === "error") {
      off(describeError(new ApiError(400, message.error || {}), "audio"));
    }
  };
  // Before "ready" the service never answered (not there, refused); after, the link broke.
  const lost = () => off(session.ready ? t("err.stream_lost") : t("pg.tr.live_unavailable"));
  socket.onerror = lost;
  socket.onclose = (event) => { if (!session.stopping && event.code !== 1000) lost(); };
  session.stop = () => {
    session.stopping = true;
    // The final transcript comes from POST /v1/audio/transcriptions (the request the code card
    // shows), so the live session is abandoned rather than asked for a second final pass.
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "cancel" }));
      socket.close(1000);
    } else if (socket.readyState === WebSocket.CONNECTING) {
      socket.onopen = () => socket.close(1000);
    }
  };
  return session;
}

async function toggleRecording() {
  const button = $("#tr-record");
  if (!tr.recorder) {
    clearAlert("transcribe");
    const session = openLive();
    const recorder = new Recorder({ onChunk: (chunk) => session.send(chunk.buffer.slice(0)) });
    try {
      await recorder.start();
    } catch (err) {
      session.stop();
      $("#tr-live-box").hidden = true;
      showNotice("transcribe", err.message, "error");
      return;
    }
    tr.recorder = recorder; tr.socket = session;
    button.textContent = t("pg.tr.stop"); button.classList.replace("secondary", "danger");
    button.dataset.recording = "true";
    $("#tr-send").disabled = true;
    return;
  }
  const { recorder, socket } = tr;
  tr.recorder = null; tr.socket = null;
  button.textContent = t("pg.tr.record"); button.classList.replace("danger", "secondary");
  delete button.dataset.recording;
  $("#tr-send").disabled = false;
  socket.stop();
  let wav;
  try {
    wav = await recorder.stop();
  } catch (err) {
    showNotice("transcribe", err.message, "error");
    return;
  }
  tr.audio = wav; tr.name = "recording.wav";
  const player = $("#tr-audio");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(wav); player.hidden = false;
  player.title = t("pg.tr.recorded", { s: (recorder.samples() / 16000).toFixed(1) });
  await busy(button, "transcribe", "audio", () => transcribe(wav, "recording.wav"));
}

// --- Speak ------------------------------------------------------------------------------------

function speechBody() {
  const body = { model: $("#sp-model").value, input: $("#sp-text").value };
  const voice = $("#sp-voice").value.trim();
  if (voice) body.voice = voice;
  body.speed = Number($("#sp-speed").value);
  body.response_format = $("#sp-format").value;
  return body;
}

function previewSpeech() {
  const body = speechBody();
  setSnippets("speak", speechSnippets(API, body, `speech.${body.response_format}`), false);
}

// A speech model's voice ids, from GET /v1/audio/voices (once per model; none if it fails:
// any id can still be typed).
async function voicesOf(id) {
  if (!(id in state.voices)) {
    try {
      state.voices[id] = (await request(`/v1/audio/voices?model=${encodeURIComponent(id)}`)).data.map((v) => v.id);
    } catch {
      return [];
    }
  }
  return state.voices[id];
}

async function onSpeechModel() {
  const id = $("#sp-model").value;
  const m = model(id);
  const own = id ? await voicesOf(id) : [];
  if ($("#sp-model").value !== id) return;  // another model was chosen meanwhile
  const voices = m?.runtime === "piper" ? [...own, ...OPENAI_VOICES] : own;
  $("#sp-voices").replaceChildren(...voices.map((v) => el("option", { value: v })));
  // A voice of another model would be refused: start from this model's first voice.
  if (!voices.includes($("#sp-voice").value)) $("#sp-voice").value = voices[0] || "";
  const help = { piper: "pg.sp.help.piper", "espeak-ng": "pg.sp.help.espeak" }[m?.runtime] || "pg.sp.help.other";
  $("#sp-voice-help").dataset.i18n = help;
  $("#sp-voice-help").textContent = t(help);
  previewSpeech();
}

async function speak() {
  const body = speechBody();
  if (!body.input.trim()) { showNotice("speak", t("pg.sp.notext")); return; }
  await busy($("#sp-send"), "speak", "", async () => {
    const file = `speech.${body.response_format}`;
    $("#sp-audio").hidden = true; $("#sp-download").hidden = true; $("#sp-meta").textContent = "";
    setSnippets("speak", speechSnippets(API, body, file), true);
    const start = performance.now();
    const response = await request("/v1/audio/speech", { method: "POST", json: body, raw: true });
    const blob = new Blob([await response.arrayBuffer()], { type: AUDIO_TYPES[body.response_format] });
    const audio = $("#sp-audio");
    const link = $("#sp-download");
    if (link.href) URL.revokeObjectURL(link.href);
    const url = URL.createObjectURL(blob);
    link.href = url; link.download = file; link.hidden = false;
    const meta = t("pg.sp.meta", { model: response.headers.get("x-kaset-model") || body.model,
                                  kb: (blob.size / 1024).toFixed(1), ms: ms(start) });
    $("#sp-meta").textContent = meta;
    if (body.response_format === "pcm") {
      audio.hidden = true; audio.removeAttribute("src");
      showNotice("speak", t("pg.sp.pcm"));
      return;
    }
    audio.src = url; audio.hidden = false;
    audio.onloadedmetadata = () => {
      if (Number.isFinite(audio.duration)) {
        $("#sp-meta").textContent = `${meta} · ${t("pg.sp.seconds", { s: audio.duration.toFixed(1) })}`;
      }
    };
    audio.play().catch(() => { /* autoplay refused: the player is there */ });
  });
}

// --- Translate --------------------------------------------------------------------------------

function fillPairs() {
  const sources = [...new Set(state.pairs.map((p) => p.source))];
  fillLanguages($("#tl-source"), sources);
  if (!$("#tl-source").value && sources.includes("en")) $("#tl-source").value = "en";
  fillTargets();
}

function fillTargets() {
  const source = $("#tl-source").value;
  const targets = state.pairs.filter((p) => p.source === source).map((p) => p.target);
  fillLanguages($("#tl-target"), [...new Set(targets)]);
  $("#tl-swap").disabled = !state.pairs.some((p) => p.source === $("#tl-target").value && p.target === source);
  previewTranslate();
}

function translateBody() {
  const source = $("#tl-source").value;
  const target = $("#tl-target").value;
  const pair = state.pairs.find((p) => p.source === source && p.target === target);
  const body = { text: $("#tl-text").value, source, target };
  if (pair) body.model = pair.model;
  return body;
}

function previewTranslate() { setSnippets("translate", translateSnippets(API, translateBody()), false); }

async function translate() {
  const body = translateBody();
  if (!body.text.trim()) { showNotice("translate", t("pg.tl.notext")); return; }
  await busy($("#tl-send"), "translate", "", async () => {
    $("#tl-output").textContent = ""; $("#tl-meta").textContent = "";
    setSnippets("translate", translateSnippets(API, body), true);
    const start = performance.now();
    const result = await request("/v1/translate", { method: "POST", json: body });
    $("#tl-output").textContent = result.translations[0];
    $("#tl-output").lang = result.target;
    $("#tl-meta").textContent = t("pg.meta", { model: result.model, ms: ms(start) });
  });
}

function swapLanguages() {
  const source = $("#tl-source").value;
  const target = $("#tl-target").value;
  const output = $("#tl-output").textContent;
  $("#tl-source").value = target;
  fillTargets();
  $("#tl-target").value = source;
  if (output) { $("#tl-text").value = output; $("#tl-output").textContent = ""; }
  fillTargets();
}

// --- Chat -------------------------------------------------------------------------------------

const chat = { history: [], controller: null };

function chatBody(extra = []) {
  const messages = [];
  const system = $("#ch-system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...chat.history, ...extra);
  return { model: $("#ch-model").value, messages, stream: true, stream_options: { include_usage: true },
           max_tokens: Number($("#ch-max").value) || 200, temperature: Number($("#ch-temp").value) };
}

function previewChat() {
  const text = $("#ch-input").value.trim();
  setSnippets("chat", chatSnippets(API, chatBody(text ? [{ role: "user", content: text }] : [])), false);
}

// Server-sent events from a fetch() body: "data: {...}" lines, "data: [DONE]" at the end.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function sendChat(event) {
  event.preventDefault();
  if (chat.controller) return;
  const text = $("#ch-input").value.trim();
  if (!text) { showNotice("chat", t("pg.ch.nomessage")); return; }
  const user = { role: "user", content: text };
  const body = chatBody([user]);
  const log = $("#ch-log");
  log.append(el("div", { class: "msg user" }, text));
  const bubble = el("div", { class: "msg assistant streaming", "data-streaming": "true" });
  log.append(bubble);
  $("#ch-input").value = "";
  chat.controller = new AbortController();
  $("#ch-stop").hidden = false;
  let answer = "";
  let usage = null;
  const start = performance.now();
  let first = null;
  await busy($("#ch-send"), "chat", "", async () => {
    setSnippets("chat", chatSnippets(API, body), true);
    try {
      const response = await request("/v1/chat/completions", { method: "POST", json: body, raw: true,
                                                               signal: chat.controller.signal });
      for await (const chunk of sseEvents(response)) {
        if (chunk.error) throw new ApiError(500, chunk.error);
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) {
          first ??= ms(start);
          answer += delta;
          bubble.textContent = answer;
        }
      }
    } catch (err) {
      if (err?.name === "AbortError") bubble.textContent = answer + t("pg.ch.stopped");
      else if (!answer) { bubble.remove(); log.lastElementChild?.remove(); $("#ch-input").value = text; }
      throw err;
    } finally {
      bubble.classList.remove("streaming");
      delete bubble.dataset.streaming;
      chat.controller = null;
      $("#ch-stop").hidden = true;
    }
    const seconds = (performance.now() - start) / 1000;
    const tokens = usage?.completion_tokens ?? answer.split(/\s+/).length;
    $("#ch-meta").textContent = t("pg.ch.meta", { model: body.model, tokens, rate: (tokens / seconds).toFixed(1),
                                                 first: first ?? "–" });
  });
  // Keep the turn (also a stopped one: what was shown is what the next request will carry).
  if (answer) chat.history.push(user, { role: "assistant", content: answer });
  previewChat();
}

// --- Vision -----------------------------------------------------------------------------------

const vision = { base64: null, name: "photo.jpg" };

async function onPhoto() {
  const file = $("#vi-file").files[0];
  const preview = $("#vi-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  if (!file) { vision.base64 = null; preview.hidden = true; return; }
  vision.name = file.name;
  vision.base64 = await readAsBase64(file);
  preview.src = URL.createObjectURL(file);
  preview.hidden = !file.type.startsWith("image/");
  previewVision();
}

function topK() { return Math.max(1, Math.min(20, Number($("#vi-topk").value) || 5)); }

function previewVision() {
  setSnippets("vision", classifySnippets(location.origin, $("#vi-model").value, vision.name, topK()), false);
}

// A new request's answer never sits next to the last one's (nor an error next to old labels).
function clearVision() {
  for (const id of ["#vi-description", "#vi-note", "#vi-meta"]) $(id).textContent = "";
  $("#vi-labels").replaceChildren();
}

function showLabels(labels) {
  $("#vi-labels").replaceChildren(...labels.map(({ label, index, score }) => el("li", { "data-index": index },
    el("span", { class: "label" }, label),
    el("span", { class: "score" }, `${(score * 100).toFixed(1)}%`),
    el("div", { class: "meter" }, el("span", { style: `width: ${Math.max(1, score * 100).toFixed(1)}%` })))));
}

async function classify() {
  if (!vision.base64) { showNotice("vision", t("pg.vi.nofile")); return; }
  const name = $("#vi-model").value;
  const k = topK();
  await busy($("#vi-classify"), "vision", "image", async () => {
    clearVision();
    setSnippets("vision", classifySnippets(location.origin, name, vision.name, k), true);
    const start = performance.now();
    const result = await request(`/v2/models/${encodeURIComponent(name)}/infer`, { method: "POST",
                                                                                  json: classifyBody(name, vision.base64, k) });
    // Triton's classification extension: "score:index:label" strings.
    showLabels(result.outputs[0].data.map((entry) => {
      const [score, index, ...label] = String(entry).split(":");
      return { score: Number(score), index: Number(index), label: label.join(":") };
    }));
    $("#vi-meta").textContent = t("pg.meta", { model: result.model_name, ms: ms(start) });
  });
}

async function describe() {
  if (!vision.base64) { showNotice("vision", t("pg.vi.nofile")); return; }
  const options = { language: $("#vi-language").value };
  await busy($("#vi-describe"), "vision", "image", async () => {
    clearVision();
    setSnippets("vision", describeSnippets(API, vision.name, options), true);
    const start = performance.now();
    const result = await request("/v1/describe-image", { method: "POST", json: { ...options, image: vision.base64 } });
    $("#vi-description").textContent = result.description;
    $("#vi-description").lang = result.language;
    $("#vi-note").textContent = result.note;
    showLabels(result.labels);
    $("#vi-meta").textContent = t("pg.meta", { model: result.models_used.join(" + ") || result.method, ms: ms(start) });
  });
}

// --- page -------------------------------------------------------------------------------------

function selectTab(tab) {
  if (!TABS.includes(tab)) tab = TABS[0];
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === tab));
  }
  for (const section of document.querySelectorAll("[data-panel]")) section.hidden = section.dataset.panel !== tab;
  if (location.hash !== `#${tab}`) history.replaceState(null, "", `#${tab}`);
}

function showSignIn(message = "") {
  $("#signin").hidden = false;
  $("#tabs").hidden = true;
  for (const section of document.querySelectorAll("[data-panel]")) section.hidden = true;
  $("#signout").hidden = true; $("#who").hidden = true;
  const alert = $("[data-role='alert']");
  alert.textContent = message; alert.hidden = !message; alert.dataset.kind = "error";
}

function showWho() {
  const c = credential();
  $("#who").textContent = c?.kind === "token" ? c.username : maskKey(c?.key || "");
  $("#who").hidden = false; $("#signout").hidden = false;
}

async function start() {
  $("#signin").hidden = true;
  $("[data-role='alert']").hidden = true;
  let models;
  let pairs;
  try {
    [models, pairs] = await Promise.all([request("/v1/models"), request("/v1/translate/languages")]);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return; // kaset:unauthorized shows the sign-in
    showSignIn(describeError(err));
    return;
  }
  state.models = models.data; state.pairs = pairs.pairs;
  showWho();
  $("#tabs").hidden = false;
  fillModels($("#tr-model"), "transcribe", ["whisper-base"]);
  fillModels($("#sp-model"), "synthesize", ["piper-joe"]);
  fillModels($("#ch-model"), "chat", ["smollm2-135m"]);
  fillModels($("#vi-model"), "classify", ["efficientnet-lite0"]);
  onTranscribeModel(); onSpeechModel(); fillPairs(); previewChat(); previewVision();
  if (!state.pairs.length) showNotice("translate", t("pg.tl.none"));
  selectTab(location.hash.slice(1));
  state.started = true;
  document.body.dataset.ready = "true";
}

function wire() {
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.addEventListener("click", () => selectTab(button.dataset.tab));
  }
  window.addEventListener("hashchange", () => { if (state.started) selectTab(location.hash.slice(1)); });

  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await signIn($("#username").value, $("#password").value);
    } catch (err) {
      showSignIn(describeError(err));
      return;
    }
    start();
  });
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!$("#apikey").value.trim()) return;
    useApiKey($("#apikey").value);
    $("#apikey").value = "";
    start();
  });
  $("#signout").addEventListener("click", () => { signOut(); showSignIn(); });
  document.addEventListener("kaset:unauthorized", (event) => showSignIn(describeError(event.detail)));

  $("#tr-model").addEventListener("change", onTranscribeModel);
  for (const id of ["#tr-language", "#tr-format"]) $(id).addEventListener("change", previewTranscribe);
  $("#tr-file").addEventListener("change", () => { tr.audio = null; previewTranscribe(); });
  $("#tr-send").addEventListener("click", transcribeFile);
  $("#tr-record").addEventListener("click", toggleRecording);

  $("#sp-model").addEventListener("change", onSpeechModel);
  $("#sp-speed").addEventListener("input", () => {
    $("#sp-speed-value").textContent = Number($("#sp-speed").value).toFixed(2).replace(/0$/, "");
    previewSpeech();
  });
  for (const id of ["#sp-text", "#sp-voice", "#sp-format"]) $(id).addEventListener("input", previewSpeech);
  $("#sp-send").addEventListener("click", speak);

  $("#tl-source").addEventListener("change", fillTargets);
  $("#tl-target").addEventListener("change", fillTargets);
  $("#tl-text").addEventListener("input", previewTranslate);
  $("#tl-swap").addEventListener("click", swapLanguages);
  $("#tl-send").addEventListener("click", translate);

  $("#ch-form").addEventListener("submit", sendChat);
  $("#ch-stop").addEventListener("click", () => chat.controller?.abort());
  $("#ch-clear").addEventListener("click", () => {
    chat.controller?.abort();
    chat.history = []; $("#ch-log").replaceChildren(); $("#ch-meta").textContent = ""; previewChat();
  });
  for (const id of ["#ch-model", "#ch-system", "#ch-input", "#ch-max", "#ch-temp"]) {
    $(id).addEventListener("input", previewChat);
  }

  $("#vi-file").addEventListener("change", onPhoto);
  for (const id of ["#vi-model", "#vi-topk"]) $(id).addEventListener("input", previewVision);
  $("#vi-classify").addEventListener("click", classify);
  $("#vi-describe").addEventListener("click", describe);

  document.addEventListener("kaset:language", () => {
    // Language names and generated texts follow the switch; static texts are data-i18n.
    if (!state.started) return;
    const snippets = { ...state.snippets };  // refilling the pickers must not turn "sent" code into a preview
    onTranscribeModel(); fillPairs(); onSpeechModel();
    state.snippets = snippets;
    for (const tab of TABS) renderCode(tab);
    // applyTranslations() reset the record button to its idle label.
    if ($("#tr-record").dataset.recording) $("#tr-record").textContent = t("pg.tr.stop");
  });
}

applyTranslations();
wireLanguageSwitch();
wire();
if (credential()) start(); else showSignIn();
