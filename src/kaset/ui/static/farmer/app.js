// Crop Guardian, the farmer app: photograph a sick plant or ask by voice or text, in Thai or
// English; a diagnosis card with the treatment plan and a spoken answer; a model comparison
// view; a history kept on the phone. Installable (manifest + service worker), no build step.

import {
  $, addMessages, ApiError, applyTranslations, credential, describeError, el, language, MicError,
  notify, openSocket, Recorder, request, signIn, signOut, t, tokenClaims, useApiKey, wireLanguageSwitch,
} from "/static/kaset.js";
import { spokenText } from "./spoken.js";

addMessages({
  en: {
    "fm.signin.why": "Sign in with the account or the key your cooperative or extension office gave you.",
    "fm.usekey": "Use this key",
    "tab.photo": "Photo", "tab.ask": "Ask", "tab.history": "History",
    "fm.crop": "My crop",
    "crop.any": "Not sure", "crop.mango": "Mango", "crop.rice": "Rice", "crop.cassava": "Cassava", "crop.durian": "Durian",
    "fm.photo.title": "Photograph the sick plant",
    "fm.photo.hint": "One leaf or fruit filling the frame, in daylight, in focus.",
    "fm.photo.take": "Take a photo", "fm.photo.choose": "Choose a photo", "fm.photo.check": "Check my plant",
    "fm.working": "Checking…", "fm.comparing": "Comparing…",
    "fm.status.diagnosed": "Diagnosis", "fm.status.unsure": "Not sure", "fm.status.not_a_plant": "Not a plant",
    "fm.status.no_model": "No photo check for this crop yet", "fm.status.not_this_crop": "Not this crop",
    "fm.title.not_this_crop": "This does not look like your crop",
    "fm.title.unlisted": "A problem the knowledge base does not describe yet",
    "fm.title.unsure": "We are not sure what this is", "fm.title.not_a_plant": "This does not look like a plant",
    "fm.title.no_model": "Ask about this crop instead",
    "fm.confidence": "Confidence", "fm.confidence.low": "not certain — check with an extension officer",
    "fm.confidence.high": "high",
    "fm.details": "Details", "fm.details.models": "Models", "fm.details.label": "Model label",
    "fm.details.ensemble": "Combined by", "fm.details.decided": "Decided by",
    "fm.speech.pending": "Preparing the spoken answer…",
    "fm.retake.title": "How to take a better photo", "fm.retake": "Take another photo",
    "fm.plan.summary": "Summary", "fm.plan.actions": "What to do now", "fm.plan.chemical": "If you spray",
    "fm.plan.safety": "Safety", "fm.plan.prevention": "Prevent it next time", "fm.plan.sources": "Sources",
    "fm.plan.season": "Season", "fm.plan.region": "Where", "fm.plan.when": "When and where",
    "fm.play": "Play the answer", "fm.pause": "Pause",
    "fm.audio.notkept": "The spoken answer is not kept in the history.",
    "fm.compare": "Compare the models", "fm.compare.title": "Model comparison",
    "fm.compare.none": "No crop model looked at this photo.", "fm.compare.agree": "The models agree.",
    "fm.compare.disagree": "The models disagree: check with an extension officer.",
    "fm.compare.unsure": "The models give the same answer but are not confident: check with an extension officer.",
    "fm.compare.final": "Final answer", "fm.compare.ensemble": "combined by {how}",
    "fm.ask.title": "Ask about your crop",
    "fm.talk.hold": "Hold to talk", "fm.talk.listening": "Listening… release when done",
    "fm.talk.thinking": "Thinking…", "fm.talk.hint": "Press and hold while you speak, release when you are done.",
    "fm.you.asked": "You asked:",
    "fm.type.label": "Or type your question", "fm.type.placeholder": "e.g. How do I treat anthracnose on mango leaves?",
    "fm.type.send": "Ask", "fm.type.empty": "Type a question first.",
    "fm.answer": "Answer", "fm.sources": "Sources",
    "fm.history.title": "Past diagnoses", "fm.history.where": "Kept on this phone only.",
    "fm.history.empty": "No diagnoses yet.", "fm.history.clear": "Clear history",
    "fm.history.confirm": "Delete all past diagnoses from this phone?",
    "fm.history.saved": "Saved diagnosis from {date}",
    "fm.nophoto": "Take or choose a photo first.",
  },
  th: {
    "fm.signin.why": "เข้าสู่ระบบด้วยบัญชีหรือคีย์ที่สหกรณ์หรือเจ้าหน้าที่ส่งเสริมการเกษตรให้ไว้",
    "fm.usekey": "ใช้คีย์นี้",
    "tab.photo": "ถ่ายรูป", "tab.ask": "ถามคำถาม", "tab.history": "ประวัติ",
    "fm.crop": "พืชของฉัน",
    "crop.any": "ไม่แน่ใจ", "crop.mango": "มะม่วง", "crop.rice": "ข้าว", "crop.cassava": "มันสำปะหลัง", "crop.durian": "ทุเรียน",
    "fm.photo.title": "ถ่ายรูปพืชที่เป็นโรค",
    "fm.photo.hint": "ให้ใบหรือผลเต็มกรอบ ในที่มีแสงธรรมชาติ และภาพชัด",
    "fm.photo.take": "ถ่ายรูป", "fm.photo.choose": "เลือกรูป", "fm.photo.check": "ตรวจพืชของฉัน",
    "fm.working": "กำลังตรวจ…", "fm.comparing": "กำลังเปรียบเทียบ…",
    "fm.status.diagnosed": "ผลการวินิจฉัย", "fm.status.unsure": "ไม่แน่ใจ", "fm.status.not_a_plant": "ไม่ใช่พืช",
    "fm.status.no_model": "ยังตรวจพืชนี้จากรูปไม่ได้", "fm.status.not_this_crop": "ไม่ใช่พืชที่เลือก",
    "fm.title.not_this_crop": "รูปนี้ดูไม่เหมือนพืชที่คุณเลือก",
    "fm.title.unlisted": "ปัญหานี้ยังไม่มีในคลังความรู้",
    "fm.title.unsure": "เรายังไม่แน่ใจว่าเป็นโรคอะไร", "fm.title.not_a_plant": "รูปนี้ดูไม่เหมือนพืช",
    "fm.title.no_model": "ลองถามคำถามเกี่ยวกับพืชนี้แทน",
    "fm.confidence": "ความมั่นใจ", "fm.confidence.low": "ยังไม่แน่ใจ ตรวจสอบกับเจ้าหน้าที่ส่งเสริมการเกษตร",
    "fm.confidence.high": "สูง",
    "fm.details": "รายละเอียด", "fm.details.models": "โมเดล", "fm.details.label": "ชื่อผลของโมเดล",
    "fm.details.ensemble": "วิธีรวมผล", "fm.details.decided": "ตัดสินโดย",
    "fm.speech.pending": "กำลังเตรียมเสียงอ่าน…",
    "fm.retake.title": "วิธีถ่ายรูปให้ดีขึ้น", "fm.retake": "ถ่ายรูปใหม่",
    "fm.plan.summary": "สรุป", "fm.plan.actions": "สิ่งที่ควรทำตอนนี้", "fm.plan.chemical": "หากต้องใช้สารเคมี",
    "fm.plan.safety": "ความปลอดภัย", "fm.plan.prevention": "ป้องกันครั้งต่อไป", "fm.plan.sources": "แหล่งข้อมูล",
    "fm.plan.season": "ฤดูกาล", "fm.plan.region": "พื้นที่", "fm.plan.when": "ช่วงเวลาและพื้นที่",
    "fm.play": "ฟังคำตอบ", "fm.pause": "หยุด",
    "fm.audio.notkept": "ประวัติไม่ได้เก็บเสียงคำตอบไว้",
    "fm.compare": "เปรียบเทียบโมเดล", "fm.compare.title": "เปรียบเทียบผลของแต่ละโมเดล",
    "fm.compare.none": "ไม่มีโมเดลพืชตัวใดตรวจรูปนี้", "fm.compare.agree": "ทุกโมเดลตอบตรงกัน",
    "fm.compare.disagree": "โมเดลตอบไม่ตรงกัน ตรวจสอบกับเจ้าหน้าที่ส่งเสริมการเกษตร",
    "fm.compare.unsure": "โมเดลตอบตรงกันแต่ยังไม่มั่นใจ ตรวจสอบกับเจ้าหน้าที่ส่งเสริมการเกษตร",
    "fm.compare.final": "คำตอบสุดท้าย", "fm.compare.ensemble": "รวมผลแบบ {how}",
    "fm.ask.title": "ถามเรื่องพืชของคุณ",
    "fm.talk.hold": "กดค้างเพื่อพูด", "fm.talk.listening": "กำลังฟัง… ปล่อยเมื่อพูดจบ",
    "fm.talk.thinking": "กำลังคิด…", "fm.talk.hint": "กดปุ่มค้างไว้ขณะพูด แล้วปล่อยเมื่อพูดจบ",
    "fm.you.asked": "คุณถามว่า:",
    "fm.type.label": "หรือพิมพ์คำถาม", "fm.type.placeholder": "เช่น ใบมะม่วงเป็นโรคแอนแทรคโนส ควรทำอย่างไร",
    "fm.type.send": "ถาม", "fm.type.empty": "กรุณาพิมพ์คำถามก่อน",
    "fm.answer": "คำตอบ", "fm.sources": "แหล่งข้อมูล",
    "fm.history.title": "ผลตรวจที่ผ่านมา", "fm.history.where": "เก็บไว้ในโทรศัพท์เครื่องนี้เท่านั้น",
    "fm.history.empty": "ยังไม่มีผลตรวจ", "fm.history.clear": "ลบประวัติ",
    "fm.history.confirm": "ลบผลตรวจที่ผ่านมาทั้งหมดออกจากโทรศัพท์เครื่องนี้?",
    "fm.history.saved": "ผลตรวจที่บันทึกไว้เมื่อ {date}",
    "fm.nophoto": "กรุณาถ่ายหรือเลือกรูปก่อน",
  },
});

const HISTORY_KEY = "kaset.farmer.history";
const HISTORY_MAX = 30;

const state = {
  photo: null,          // the File being diagnosed
  photoUrl: null,       // its preview's blob URL
  thumb: null,          // its small JPEG data URL, for the history
  shown: null,          // {data, saved} of the diagnosis card on screen, re-rendered on a language switch
  compared: null,       // the comparison response on screen
  typed: null,          // the typed question's response on screen
  voice: null,          // the VoiceQuestion in progress
  urls: new Map(),      // audio object (from a response) -> its blob URL, made once, released when replaced
};

// --- icons ------------------------------------------------------------------------------------

// Line icons drawn inline: phones without an emoji font would show empty boxes.
const ICONS = {
  camera: '<path d="M4 8h3l2-3h6l2 3h3v11H4z"/><circle cx="12" cy="13" r="3.5"/>',
  image: '<rect x="3" y="5" width="18" height="14" rx="2"/><circle cx="9" cy="10" r="1.8"/><path d="M4 18l5-5 4 4 3-3 4 4"/>',
  mic: '<rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3M8 21h8"/>',
  speaker: '<path d="M4 9h4l5-4v14l-5-4H4z"/><path d="M16 9a4 4 0 0 1 0 6M18.5 6.5a8 8 0 0 1 0 11"/>',
  leaf: '<path d="M5 19c0-9 5-14 15-15-1 10-6 15-15 15z"/><path d="M5 19l8-8"/>',
};

function icon(name) {
  const span = el("span", { class: "icon", "aria-hidden": "true" });
  span.innerHTML = `<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">${ICONS[name]}</svg>`;
  return span;
}

// --- screens and tabs -------------------------------------------------------------------------

function showSignIn(message = "", kind = "error") {
  $("#signin").hidden = false;
  $("#app").hidden = true;
  $("#tabs").hidden = true;
  $("#signout").hidden = true;
  state.voice?.abandon();
  notify(message, { kind });
}

function showApp() {
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#tabs").hidden = false;
  $("#signout").hidden = false;
  notify("");
}

function selectTab(name) {
  for (const tab of document.querySelectorAll("#tabs [role=tab]")) tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
  for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
  // The crop applies to photos and questions, not to the history.
  $("#crops").hidden = name === "history";
  if (name === "history") renderHistory();
  notify("");
}

function selectedCrop() {
  return document.querySelector("input[name=crop]:checked")?.value || null;
}

function showError(err, context = "") {
  notify(typeof err === "string" ? err : describeError(err, context));
  document.querySelector("[data-role='alert']").scrollIntoView({ block: "nearest" });
}

// An access token past its expiry with no refresh token that could renew it: sign in again,
// before the person takes a photo for nothing. A garbage credential is found by the first call.
function signInExpired() {
  const c = credential();
  if (!c || c.kind !== "token") return false;
  const now = Date.now() / 1000;
  const access = tokenClaims(c.access).exp;
  const refresh = c.refresh ? tokenClaims(c.refresh).exp : null;
  return Boolean(access && access < now && (!refresh || refresh < now));
}

function busy(button, labelKey) {
  const original = [...button.childNodes];
  button.disabled = true;
  button.replaceChildren(el("span", { class: "spinner", "aria-hidden": "true" }), el("span", {}, t(labelKey)));
  return () => { button.disabled = false; button.replaceChildren(...original); };
}

// The spoken answer of a response: answers are asked for with speak=false, shown at once, and
// their short spoken text (spoken.js) is then sent to /v1/audio/speech. `data.speech` is
// {status: "pending" | "ready" | "none" | "failed", url, notice}; its blob URL is released when
// the answer leaves the screen.
const voices = new Map();  // language -> Promise of {model, voice} or null

function voiceFor(lang) {
  if (!voices.has(lang)) {
    voices.set(lang, request(`/v1/audio/voices?language=${encodeURIComponent(lang)}`).then((list) => {
      const found = (list.data || []).filter((v) => v.model !== "echo");
      const chosen = found.find((v) => v.default) || found[0];
      return chosen ? { model: chosen.model, voice: chosen.id } : null;
    }, () => { voices.delete(lang); return null; }));
  }
  return voices.get(lang);
}

async function fetchSpeech(data, onChange) {
  const speech = data.speech = { status: "pending" };
  onChange();
  try {
    const chosen = await voiceFor(data.language);
    if (!chosen) {
      speech.status = "none";
    } else {
      const response = await request("/v1/audio/speech", { method: "POST", raw: true, json: {
        model: chosen.model, voice: chosen.voice, input: spokenText(data), response_format: "wav" } });
      speech.url = URL.createObjectURL(await response.blob());
      state.urls.set(speech, speech.url);
      speech.status = "ready";
    }
  } catch (err) {
    speech.status = "failed";
    speech.error = describeError(err, "audio");
  }
  onChange();
  return speech;
}

// Speech of answers no longer on screen is released.
function releaseAudio(keep) {
  for (const [audio, url] of state.urls) {
    if (!keep.includes(audio)) { URL.revokeObjectURL(url); state.urls.delete(audio); }
  }
}

function onScreenAudio() {
  return [state.shown?.data?.speech, state.typed?.speech, state.voice?.data?.speech].filter(Boolean);
}

// The card's spoken-answer part, replaced in place when the speech arrives (a re-render of the
// whole card would close the sections the person opened).
function refreshSpoken(root, data, saved) {
  return () => root.querySelector(".spoken")?.replaceWith(spokenAnswer(data, saved));
}

function noticeText(notice) {
  // Our own wording for known codes, in the person's language; the server's otherwise.
  return notice.code === "no_voice" ? t("err.no_voice") : notice.message;
}

// --- photo → diagnosis --------------------------------------------------------------------------

async function onPhotoChosen(input) {
  const file = input.files?.[0];
  input.value = "";  // choosing the same file again must fire `change` again
  if (!file) return;
  state.photo = file; state.thumb = null;
  $("#result").replaceChildren(); $("#compare-result").replaceChildren(); state.shown = null; state.compared = null;
  notify("");
  const img = $("#preview-img");
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  const url = state.photoUrl = URL.createObjectURL(file);
  $("#preview").hidden = false;
  $("#preview-name").textContent = file.name;
  $("#diagnose").disabled = false;
  img.onload = () => { state.thumb = thumbnail(img); };
  // The browser cannot show it: the server decides (it reads more formats); the preview hides.
  img.onerror = () => { $("#preview").hidden = true; };
  img.src = url;
}

function thumbnail(img, size = 96) {
  const canvas = document.createElement("canvas");
  canvas.width = size; canvas.height = size;
  const side = Math.min(img.naturalWidth, img.naturalHeight);
  canvas.getContext("2d").drawImage(img, (img.naturalWidth - side) / 2, (img.naturalHeight - side) / 2, side, side,
                                    0, 0, size, size);
  return canvas.toDataURL("image/jpeg", 0.7);
}

function photoForm({ compare = false } = {}) {
  const form = new FormData();
  form.append("image", state.photo, state.photo.name || "photo.jpg");
  form.append("language", language());
  const crop = selectedCrop();
  if (crop) form.append("crop", crop);
  // The text comes back without speech, so it is on screen at once; the speech follows (fetchSpeech).
  form.append("speak", "false");
  if (compare) form.append("compare", "true");
  return form;
}

async function diagnose() {
  if (!state.photo) return showError(t("fm.nophoto"));
  notify("");
  const done = busy($("#diagnose"), "fm.working");
  try {
    const data = await request("/v1/crop-doctor", { method: "POST", body: photoForm() });
    state.shown = { data, saved: null };
    state.compared = null;
    $("#compare-result").replaceChildren();
    renderDiagnosis();
    remember(data);
    $("#result").scrollIntoView({ block: "start", behavior: "smooth" });
    const refresh = refreshSpoken($("#result"), data, null);
    fetchSpeech(data, () => { if (state.shown?.data === data) refresh(); });
  } catch (err) {
    showError(err, "image");
  } finally {
    done();
  }
}

async function compareModels(button) {
  if (!state.photo) return showError(t("fm.nophoto"));
  const done = busy(button, "fm.comparing");
  try {
    state.compared = await request("/v1/crop-doctor", { method: "POST", body: photoForm({ compare: true }) });
    renderComparison();
    $("#compare-result").scrollIntoView({ block: "start", behavior: "smooth" });
  } catch (err) {
    showError(err, "image");
  } finally {
    done();
  }
}

function list(items, className = "") {
  return el("ul", { class: className }, items.map((item) => el("li", {}, item)));
}

function section(titleKey, ...content) {
  return el("section", { class: "plan-part" }, el("h3", {}, t(titleKey)), ...content);
}

function fold(titleKey, className, ...content) {
  return el("details", { class: `plan-part ${className}` }, el("summary", {}, t(titleKey)), ...content);
}

function sourceLinks(sources) {
  return list(sources.map((s) => el("a", { href: s.url, target: "_blank", rel: "noopener" },
                                       s.publisher ? `${s.title} — ${s.publisher}` : s.title)), "sources");
}

// Green only when the diagnosis says its confidence is high (at or above the crop's calibrated
// bar); amber, with "check with an extension officer", otherwise, whatever the percentage.
function confidenceMeter(confidence, status, level) {
  const percent = Math.round(confidence * 100);
  const low = status !== "diagnosed" || level !== "high";
  return el("div", { class: "confidence" },
    el("div", { class: "confidence-text" }, el("span", {}, t("fm.confidence")), " ",
       el("strong", {}, `${percent}%`), low ? el("span", { class: "muted" }, ` · ${t("fm.confidence.low")}`) : null),
    el("div", { class: low ? "meter low" : "meter", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100",
                "aria-valuenow": String(percent), "aria-label": t("fm.confidence") },
       el("span", { style: `width:${percent}%` })));
}

// The play button and the player for a response's spoken answer, or why there is none.
function spokenAnswer(data, saved) {
  const speech = data.speech;
  if (saved) return el("div", { class: "spoken" }, el("p", { class: "muted" }, t("fm.audio.notkept")));
  const notices = (data.notices || []).map((n) => el("p", { class: "alert", "data-kind": "notice", "data-code": n.code },
                                                       noticeText(n)));
  if (speech?.status === "ready") {
    const player = el("audio", { controls: true, preload: "auto", src: speech.url, class: "answer-audio" });
    const label = el("span", {}, t("fm.play"));
    const play = el("button", { type: "button", class: "big play", onclick: () => (player.paused ? player.play() : player.pause()) },
                    icon("speaker"), label);
    player.addEventListener("play", () => { label.textContent = t("fm.pause"); });
    player.addEventListener("pause", () => { label.textContent = t("fm.play"); });
    return el("div", { class: "spoken", "data-speech": "ready" }, play, player, ...notices);
  }
  if (speech?.status === "pending") {
    return el("div", { class: "spoken", "data-speech": "pending" },
              el("p", { class: "muted" }, el("span", { class: "spinner", "aria-hidden": "true" }), " ", t("fm.speech.pending")));
  }
  if (speech?.status === "failed") {
    notices.push(el("p", { class: "alert", "data-kind": "notice", "data-code": "speech_failed" }, speech.error));
  } else if (!notices.length && data.answer) {
    notices.push(el("p", { class: "alert", "data-kind": "notice", "data-code": "no_voice" }, t("err.no_voice")));
  }
  return el("div", { class: "spoken", "data-speech": speech?.status || "none" }, ...notices);
}

// A disease's name in the answer's language: the knowledge base entry's, never a model label
// in Thai (the label is under "Details").
function labelName(d, language) {
  if (d.plan?.name) return d.plan.name;
  return language === "th" ? t("fm.title.unlisted") : (d.label || t("fm.title.unlisted"));
}

// Model ids, versions and how they were combined: folded away, for whoever wants to know.
function modelDetails(d) {
  const rows = [];
  if (d.label) rows.push([t("fm.details.label"), d.label]);
  if (d.models_used?.length) rows.push([t("fm.details.models"), d.models_used.join(", ")]);
  if (d.ensemble) rows.push([t("fm.details.ensemble"), d.ensemble]);
  if (d.gate?.decided_by) rows.push([t("fm.details.decided"), d.gate.decided_by]);
  if (!rows.length) return null;
  return el("details", { class: "plan-part model-details" }, el("summary", {}, t("fm.details")),
            el("dl", {}, rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { lang: "en" }, v)])));
}

function diagnosisCard(data, saved) {
  const d = data.diagnosis;
  if (!d) return el("article", { class: "card diagnosis" }, el("p", {}, data.answer));
  const plan = d.plan;
  const status = d.status;
  const pillClass = { diagnosed: "pill", unsure: "pill warn", not_a_plant: "pill bad", not_this_crop: "pill bad",
                      no_model: "pill warn" }[status] || "pill warn";
  const title = status === "diagnosed" ? labelName(d, data.language) : t(`fm.title.${status}`);
  const parts = [
    el("div", { class: "card-head" }, el("span", { class: pillClass, "data-status": status }, t(`fm.status.${status}`)),
       d.crop && status !== "not_a_plant" ? el("span", { class: "muted crop-name" }, t(`crop.${d.crop}`)) : null),
    el("h2", { class: "label-name" }, title),
  ];
  if (saved) parts.push(el("p", { class: "muted" }, t("fm.history.saved", { date: formatDate(saved.at) })));
  if (d.confidence !== null && d.confidence !== undefined) parts.push(confidenceMeter(d.confidence, status, d.confidence_level));
  // A diagnosed photo's message is its disease's name (or, without an entry, the model's label).
  if (d.message && d.message !== title && status !== "diagnosed") parts.push(el("p", { class: "message" }, d.message));
  // The spoken answer near the top: for many farmers, listening is easier than reading the plan.
  parts.push(spokenAnswer(data, saved));
  if (status === "unsure" || status === "not_a_plant" || status === "not_this_crop") {
    parts.push(section("fm.retake.title", list(d.retake_tips || [], "tips")),
               el("button", { type: "button", class: "big secondary retake", onclick: () => $("#camera").click() },
                  icon("camera"), t("fm.retake")));
  }
  if (status === "no_model") {
    parts.push(el("button", { type: "button", class: "big secondary", onclick: () => selectTab("ask") }, t("tab.ask")));
  }
  if (plan) {
    if (plan.summary) parts.push(section("fm.plan.summary", el("p", {}, plan.summary)));
    if (plan.actions?.length) parts.push(section("fm.plan.actions", list(plan.actions, "actions")));
    // The rest folds away on a phone; whoever opens the spraying part sees its safety rules with it.
    if (plan.chemical?.length || plan.safety?.length) {
      parts.push(fold("fm.plan.chemical", "chemical-part",
        plan.chemical?.length ? list(plan.chemical.map((c) => [el("strong", {}, c.active_ingredient), ": ", c.how]), "chemical") : null,
        plan.safety?.length ? el("h4", {}, t("fm.plan.safety")) : null,
        plan.safety?.length ? list(plan.safety, "safety") : null));
    }
    if (plan.prevention?.length) parts.push(fold("fm.plan.prevention", "prevention-part", list(plan.prevention, "prevention")));
    if (plan.season_notes || plan.region_notes) {
      parts.push(fold("fm.plan.when", "notes-part",
        plan.season_notes ? el("p", {}, el("strong", {}, `${t("fm.plan.season")}: `), plan.season_notes) : null,
        plan.region_notes ? el("p", {}, el("strong", {}, `${t("fm.plan.region")}: `), plan.region_notes) : null));
    }
    if (plan.sources?.length) parts.push(fold("fm.plan.sources", "sources-part", sourceLinks(plan.sources)));
  }
  const details = modelDetails(d);
  if (details) parts.push(details);
  if (!saved && d.status !== "not_a_plant") {
    const compare = el("button", { type: "button", class: "secondary compare" }, t("fm.compare"));
    compare.addEventListener("click", () => compareModels(compare));
    parts.push(compare);
  }
  return el("article", { class: `card diagnosis status-${status}`, "data-status": status, lang: data.language,
                         "data-confidence": d.confidence_level || "" }, ...parts);
}

function renderDiagnosis() {
  releaseAudio(onScreenAudio());
  const shown = state.shown;
  $("#result").replaceChildren(shown ? diagnosisCard(shown.data, shown.saved) : "");
}

function renderComparison() {
  const data = state.compared;
  if (!data) { $("#compare-result").replaceChildren(); return; }
  const d = data.diagnosis;
  const models = d?.per_model || [];
  const parts = [el("h2", {}, t("fm.compare.title"))];
  if (!models.length) {
    parts.push(el("p", {}, t("fm.compare.none")), el("p", { class: "muted" }, d?.message || data.answer));
  } else {
    // "Agree" only when the server says they agree and are confident (`models_agree`); the same
    // top label at 57% and 60% is not agreement worth a green box.
    const same = new Set(models.map((m) => m.top[0]?.label)).size === 1;
    const agree = d.models_agree === true;
    const verdict = agree ? "fm.compare.agree" : same ? "fm.compare.unsure" : "fm.compare.disagree";
    parts.push(el("p", { class: "alert", "data-kind": agree ? "ok" : "notice", "data-verdict": verdict }, t(verdict)));
    if (d.label) {
      parts.push(el("p", { class: "final" }, el("strong", {}, `${t("fm.compare.final")}: `), labelName(d, data.language),
                    d.confidence != null ? ` (${Math.round(d.confidence * 100)}%)` : ""));
    }
    const columns = el("div", { class: "compare-grid" }, models.map((m) => el("div", { class: "model-column", "data-model": `${m.model}@${m.version}` },
      el("h3", {}, `${m.model}@${m.version}`), el("p", { class: "muted" }, m.slot),
      el("ol", { class: "model-top" }, m.top.map((s) => el("li", {},
        el("div", { class: "score-line" }, el("span", { class: "top-label" }, s.label), el("span", {}, `${Math.round(s.score * 100)}%`)),
        el("div", { class: agree ? "meter" : "meter low" }, el("span", { style: `width:${Math.round(s.score * 100)}%` }))))))));
    // Model ids and their English labels: behind "Details", so a Thai screen reads Thai.
    parts.push(el("details", { class: "plan-part model-details", lang: "en" }, el("summary", { lang: data.language }, t("fm.details")),
                  columns, d.ensemble ? el("p", { class: "muted" }, t("fm.compare.ensemble", { how: d.ensemble })) : null));
  }
  $("#compare-result").replaceChildren(el("article", { class: "card comparison", lang: data.language }, ...parts));
}

// --- history (on this device only) --------------------------------------------------------------

function loadHistory() {
  try { return JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]"); } catch { return []; }
}

function saveHistory(entries) {
  // A full localStorage drops the oldest entries rather than losing the new one.
  while (entries.length) {
    try { localStorage.setItem(HISTORY_KEY, JSON.stringify(entries)); return; } catch { entries.pop(); }
  }
  localStorage.removeItem(HISTORY_KEY);
}

function remember(data) {
  const d = data.diagnosis;
  if (!d) return;
  // The spoken answer is large (hundreds of kB): history keeps the text only.
  const { audio, speech, ...kept } = data;
  const entry = { id: `${Date.now()}-${Math.random().toString(36).slice(2, 8)}`, at: new Date().toISOString(),
                  thumb: state.thumb, status: d.status, label: d.status === "diagnosed" ? labelName(d, data.language) : null,
                  confidence: d.confidence, crop: d.crop, response: kept };
  saveHistory([entry, ...loadHistory()].slice(0, HISTORY_MAX));
}

function formatDate(iso) {
  const locale = language() === "th" ? "th-TH" : "en-GB";
  return new Date(iso).toLocaleString(locale, { dateStyle: "medium", timeStyle: "short" });
}

function renderHistory() {
  const entries = loadHistory();
  $("#history-empty").hidden = entries.length > 0;
  $("#history-clear").hidden = entries.length === 0;
  $("#history").replaceChildren(...entries.map((entry) => el("li", {},
    el("button", { type: "button", class: "history-item", "data-id": entry.id, onclick: () => reopen(entry) },
       entry.thumb ? el("img", { src: entry.thumb, alt: "", width: "64", height: "64" }) : el("span", { class: "no-thumb" }, icon("leaf")),
       el("span", { class: "history-text" },
          el("strong", {}, entry.label || t(`fm.status.${entry.status}`)),
          el("span", { class: "muted" }, [formatDate(entry.at), entry.crop ? t(`crop.${entry.crop}`) : null,
                                          entry.confidence != null ? `${Math.round(entry.confidence * 100)}%` : null]
            .filter(Boolean).join(" · ")))))));
}

function reopen(entry) {
  state.photo = null;
  $("#preview").hidden = true;
  $("#diagnose").disabled = true;
  state.shown = { data: entry.response, saved: entry };
  state.compared = null;
  $("#compare-result").replaceChildren();
  selectTab("photo");
  renderDiagnosis();
}

// --- typed question ---------------------------------------------------------------------------

async function askTyped(event) {
  event.preventDefault();
  const question = $("#question").value.trim();
  if (!question) return showError(t("fm.type.empty"));
  notify("");
  const done = busy($("#ask"), "fm.talk.thinking");
  try {
    const form = new FormData();
    form.append("question", question);
    // "auto": the answer comes in the language the question was written in.
    form.append("language", "auto");
    const crop = selectedCrop();
    if (crop) form.append("crop", crop);
    form.append("speak", "false");
    const data = state.typed = await request("/v1/crop-doctor", { method: "POST", body: form });
    renderTyped();
    const refresh = refreshSpoken($("#typed-result"), data, null);
    fetchSpeech(data, () => { if (state.typed === data) refresh(); });
  } catch (err) {
    showError(err);
  } finally {
    done();
  }
}

// The curated answer's text: paragraphs separated by blank lines, "- " lines as lists.
function formatAnswer(text) {
  return (text || "").split(/\n\s*\n/).map((block) => {
    const lines = block.split("\n").map((line) => line.trim()).filter(Boolean);
    const items = lines.filter((line) => /^[-•]\s+/.test(line)).map((line) => line.replace(/^[-•]\s+/, ""));
    const prose = lines.filter((line) => !/^[-•]\s+/.test(line)).join(" ");
    return el("div", { class: "answer-block" }, prose ? el("p", {}, prose) : null, items.length ? list(items) : null);
  });
}

function answerCard(data) {
  const citations = data.advice?.citations || data.citations || [];
  const seen = new Set();
  const sources = citations.flatMap((c) => c.sources || []).filter((s) => !seen.has(s.url) && seen.add(s.url));
  return el("article", { class: "card answer-card", lang: data.language },
    el("h2", {}, t("fm.answer")),
    spokenAnswer(data, null),
    el("div", { class: "answer-text" }, formatAnswer(data.answer)),
    sources.length ? fold("fm.sources", "sources-part", sourceLinks(sources)) : null);
}

function renderTyped() {
  releaseAudio(onScreenAudio());
  $("#typed-result").replaceChildren(state.typed ? answerCard(state.typed) : "");
}

// --- hold-to-talk voice question ----------------------------------------------------------------

function socketError(error) {
  // The stream's error event carries the envelope without an HTTP status: give it the one the
  // same error has over HTTP, so it reads the same.
  const status = { authentication_error: 401, rate_limit_error: 429, permission_error: 403,
                   invalid_request_error: 400 }[error.type] ?? 500;
  return new ApiError(status, error);
}

// One spoken question: press starts the recorder and the stream, release ends the speech. The
// stream only transcribes (partial transcripts while speaking, then the final one); the
// transcript then goes to /v1/crop-doctor like a typed question: the answer's text is shown as
// soon as it comes, whole (lists as lists), and its short spoken answer plays after it.
class VoiceQuestion {
  constructor() {
    this.socket = null; this.opened = false; this.finished = false; this.released = false;
    this.pending = []; this.transcript = null; this.data = null;
    this.player = $("#voice-audio");
    this.recorder = new Recorder({ onChunk: (chunk) => this.send(chunk) });
  }

  begin() {
    resetVoiceOutput();
    setTalk("listening");
    // The stream opens once the microphone works: a blocked microphone costs no server session.
    this.started = this.recorder.start().then(() => {
      // Abandoned while the browser was still opening the microphone.
      if (this.finished) { this.recorder.stop().catch(() => {}); return false; }
      if (!this.released) this.connect();
      return true;
    }, (err) => {
      this.fail(err);
      return false;
    });
  }

  connect() {
    try {
      this.socket = openSocket("/v1/voice/stream");
    } catch {
      this.socket = null;  // no WebSocket at all: the recording goes by POST on release
      return;
    }
    this.socket.binaryType = "arraybuffer";
    this.socket.onopen = () => {
      this.opened = true;
      this.socket.send(JSON.stringify({ type: "start", mode: "transcribe", language: language(), voice: null,
                                        response_format: "wav", sample_rate: 16000, crop: selectedCrop(),
                                        topic: "crops" }));
      for (const chunk of this.pending.splice(0)) this.socket.send(chunk);
      if (this.stopMessage) this.socket.send(this.stopMessage);
    };
    this.socket.onmessage = (event) => this.onEvent(JSON.parse(event.data));
    this.socket.onclose = () => this.onClose();
  }

  send(chunk) {
    if (this.finished || this.released) return;
    if (this.opened && this.socket.readyState === WebSocket.OPEN) this.socket.send(chunk.buffer);
    else this.pending.push(chunk.buffer);
  }

  async end() {
    if (this.released) return;
    this.released = true;
    if (!(await this.started)) return;
    let wav;
    try {
      wav = await this.recorder.stop();
    } catch (err) {
      this.fail(err);
      return;
    }
    if (this.finished) return;
    setTalk("thinking");
    if (this.socket && !this.socketFailed) {
      const stop = JSON.stringify({ type: "stop" });
      if (this.opened) this.socket.send(stop); else this.stopMessage = stop;
      this.wav = wav;  // kept in case the socket turns out not to connect at all
    } else {
      await this.ask({ audio: wav });
    }
  }

  // The question to the crop doctor: the transcript, or (the WebSocket could not be opened: a
  // proxy without WebSocket support) the whole recording, heard there.
  async ask({ question = null, audio = null }) {
    const form = new FormData();
    if (question) form.append("question", question);
    if (audio) form.append("audio", audio, "question.wav");
    form.append("language", language());
    form.append("speak", "false");
    const crop = selectedCrop();
    if (crop) form.append("crop", crop);
    try {
      const data = await request("/v1/crop-doctor", { method: "POST", body: form });
      if (this.finished) return;
      if (data.transcript) showTranscript(data.transcript, true);
      this.answered(data);
    } catch (err) {
      this.fail(err);
    }
  }

  answered(data) {
    this.data = data;
    showVoiceAnswer(data);
    this.finished = true;
    setTalk("idle");
    fetchSpeech(data, () => {
      const speech = data.speech;
      if (state.voice !== this || speech.status === "pending") return;
      if (speech.status === "ready") this.play(speech.url);
      else if (speech.status === "failed") voiceNotice({ code: "speech_failed", message: speech.error });
      else if (!(data.notices || []).some((n) => n.code === "no_voice")) voiceNotice({ code: "no_voice" });
    });
  }

  play(url) {
    this.player.hidden = false;
    this.player.src = url;
    this.player.play().then(() => { this.player.dataset.played = "1"; },
                            () => { /* blocked autoplay: the controls are there to press */ });
  }

  onEvent(event) {
    if (this.finished) return;
    switch (event.type) {
      case "transcript.partial": showTranscript(event.text, false); break;
      case "transcript.final": this.transcript = event.text; showTranscript(event.text, true); break;
      case "done":
        this.socket.close(1000);
        this.ask({ question: this.transcript });
        break;
      case "error": this.fail(socketError(event.error || {})); break;
      default: break;
    }
  }

  onClose() {
    if (this.finished || this.transcript !== null) return;
    if (!this.opened) {
      // Never connected: fall back to the one-call API with the whole recording.
      this.socketFailed = true;
      if (this.wav) this.ask({ audio: this.wav });
      return;
    }
    this.fail(new Error(t("err.stream_lost")), "stream_lost");
  }

  fail(err, code = null) {
    if (this.finished) return;
    this.finished = true;
    setTalk("idle");
    const box = $("#voice-alert");
    box.textContent = err instanceof MicError ? err.message : describeError(err, "audio");
    box.dataset.code = code || err.code || "";
    box.hidden = false;
    if (err instanceof ApiError && err.status === 401) {
      document.dispatchEvent(new CustomEvent("kaset:unauthorized", { detail: err }));
    }
    this.close();
  }

  // Stop everything: the person pressed again, signed out or left.
  abandon() {
    this.finished = true;
    this.player.pause();
    this.close();
    this.recorder.stop().catch(() => {});
  }

  close() {
    if (!this.socket || this.socket.readyState > WebSocket.OPEN) return;
    if (this.socket.readyState === WebSocket.OPEN) {
      try { this.socket.send(JSON.stringify({ type: "cancel" })); } catch { /* closing anyway */ }
    }
    this.socket.close(1000);
  }
}

function setTalk(mode) {
  const button = $("#talk");
  button.dataset.state = mode;
  $("#talk-label").textContent = t({ idle: "fm.talk.hold", listening: "fm.talk.listening", thinking: "fm.talk.thinking" }[mode]);
}

function resetVoiceOutput() {
  $("#voice-alert").hidden = true;
  $("#voice-output").hidden = true;
  $("#transcript").textContent = "";
  $("#transcript").classList.remove("final");
  $("#voice-answer").replaceChildren();
  const player = $("#voice-audio");
  player.pause();
  player.removeAttribute("src");
  delete player.dataset.played;
  player.hidden = true;
}

function showTranscript(text, final) {
  $("#voice-output").hidden = false;
  const node = $("#transcript");
  node.textContent = text;
  node.classList.toggle("final", final);
}

// The answer to a spoken question, whole: paragraphs, and the plan's steps as list items.
function showVoiceAnswer(data) {
  $("#voice-output").hidden = false;
  $("#voice-answer").setAttribute("lang", data.language);
  $("#voice-answer").replaceChildren(...formatAnswer(data.answer));
  for (const notice of data.notices || []) voiceNotice(notice);
}

function voiceNotice(notice) {
  $("#voice-output").hidden = false;
  $("#voice-answer").after(el("p", { class: "alert", "data-kind": "notice", "data-code": notice.code }, noticeText(notice)));
}

function wireTalkButton() {
  const button = $("#talk");
  setTalk("idle");
  const press = () => {
    state.voice?.abandon();
    document.querySelectorAll("#voice-output > .alert").forEach((n) => n.remove());
    state.voice = new VoiceQuestion();
    releaseAudio(onScreenAudio());
    state.voice.begin();
  };
  const release = () => { state.voice?.end(); };
  button.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    // Keep getting this pointer's events even if the finger slides off the button.
    button.setPointerCapture?.(event.pointerId);
    event.preventDefault();
    press();
  });
  button.addEventListener("pointerup", release);
  button.addEventListener("pointercancel", release);
  // A long press must not open the phone's context menu or select text.
  button.addEventListener("contextmenu", (event) => event.preventDefault());
  // Keyboard: hold Space or Enter.
  button.addEventListener("keydown", (event) => {
    if ((event.key === " " || event.key === "Enter") && !event.repeat) { event.preventDefault(); press(); }
  });
  button.addEventListener("keyup", (event) => {
    if (event.key === " " || event.key === "Enter") { event.preventDefault(); release(); }
  });
}

// --- start ------------------------------------------------------------------------------------

function wire() {
  for (const slot of document.querySelectorAll("[data-icon]")) slot.replaceWith(icon(slot.dataset.icon));
  applyTranslations();
  wireLanguageSwitch();
  for (const tab of document.querySelectorAll("#tabs [role=tab]")) tab.addEventListener("click", () => selectTab(tab.dataset.tab));
  $("#camera").addEventListener("change", (e) => onPhotoChosen(e.target));
  $("#gallery").addEventListener("change", (e) => onPhotoChosen(e.target));
  $("#diagnose").addEventListener("click", diagnose);
  $("#question-form").addEventListener("submit", askTyped);
  $("#history-clear").addEventListener("click", () => {
    if (!confirm(t("fm.history.confirm"))) return;
    localStorage.removeItem(HISTORY_KEY);
    renderHistory();
  });
  wireTalkButton();

  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const done = busy(event.submitter || $("#signin-form button"), "auth.submit");
    try {
      await signIn($("#username").value.trim(), $("#password").value);
      $("#password").value = "";
      showApp();
    } catch (err) {
      showError(err);
    } finally {
      done();
    }
  });
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    useApiKey($("#apikey").value);
    $("#apikey").value = "";
    showApp();
  });
  $("#signout").addEventListener("click", () => signOut());
  document.addEventListener("kaset:signedout", () => showSignIn());
  // Any call answered 401 (a revoked key, an expired or garbled sign-in): back to sign-in, saying why.
  document.addEventListener("kaset:unauthorized", (event) => {
    const message = describeError(event.detail);
    signOut();
    showSignIn(message);
  });
  document.addEventListener("kaset:language", () => {
    renderDiagnosis(); renderComparison(); renderTyped(); renderHistory();
    if (state.voice?.finished !== false) setTalk("idle");
  });
}

wire();
if (signInExpired()) {
  signOut();
  showSignIn(t("err.expired"));
} else if (credential()) {
  showApp();
} else {
  showSignIn(t("auth.needed"), "notice");
}

document.body.dataset.ready = "1";

// The service worker keeps the app shell for when the farm has no signal (never API answers).
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("sw.js").catch((err) => console.warn("service worker not registered:", err));
}
