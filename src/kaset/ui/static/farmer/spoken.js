// What the farmer app says aloud: the same short answer as the crop doctor's own spoken answer
// (src/kaset/pipelines/spoken_answer.py), built from a /v1/crop-doctor response that was asked
// with speak=false, so the text is on screen at once and the speech is fetched after it.
// The server's `spoken` text wins when the response carries one; this mirror is the fallback.
// Keep the two in step (tests/ui/test_farmer.py compares them).

export const BUDGET = { en: 330, th: 220 };
export const MAX_ACTIONS = 3;

const WORDS = {
  en: {
    looks: "This looks like {name}.", healthy: "{name}: no disease found.",
    caution: "I am not certain, so check with an extension officer.", do: "What to do now:",
    keep: "To keep it healthy:", about: "For {name}, what to do now:", details: "The details are on the screen.",
    tips: "More tips are on the screen.",
  },
  th: {
    looks: "ภาพนี้ดูเหมือน{name}", healthy: "{name}", caution: "ยังไม่แน่ใจนัก ควรตรวจสอบกับเจ้าหน้าที่ส่งเสริมการเกษตร",
    do: "สิ่งที่ควรทำตอนนี้", keep: "การดูแลให้ต้นแข็งแรง", about: "{name} สิ่งที่ควรทำตอนนี้",
    details: "รายละเอียดอยู่บนหน้าจอ", tips: "คำแนะนำอื่นอยู่บนหน้าจอ",
  },
};

// The retake tip worth saying, by the signal that refused the photo (index into the tips list).
const TIP_FOR_SIGNAL = {
  imagenet_object: 2, imagenet_foreign_plant: 2, leaf_colour: 1, leaf_area: 2, leaf_edges: 2, leaf_solidity: 3,
  leaf_elongation: 2, crop_confidence: 0, crop_model_agreement: 0,
};

function sentence(text, language) {
  const clean = String(text || "").split(/\s+/).filter(Boolean).join(" ");
  return language === "en" && clean && !/[.!?:]$/.test(clean) ? `${clean}.` : clean;
}

function join(pieces, language) {
  return pieces.filter((p) => p && p.trim()).map((p) => sentence(p, language)).join(" ");
}

function retakeTip(d) {
  const tips = d.retake_tips || [];
  if (!tips.length) return null;
  const by = d.gate?.decided_by ?? (d.status === "not_a_plant" ? "imagenet_object" : null);
  const index = TIP_FOR_SIGNAL[by] ?? 0;
  return tips[index] ?? tips[0];
}

// An entry said briefly: lead, caution, heading, then its first actions, whole, as many as fit.
function entrySpeech({ name, actions }, language, { lead, caution = [], heading = null, room = null, most = MAX_ACTIONS }) {
  const words = WORDS[language];
  const said = [lead.replace("{name}", name), ...caution];
  if (heading) said.push(heading);
  let left = (room ?? BUDGET[language]) - join(said, language).length - words.details.length - 1;
  const chosen = [];
  for (const action of (actions || []).slice(0, most)) {
    const line = sentence(action, language);
    if (chosen.length && line.length + 1 > left) break;
    chosen.push(line);
    left -= line.length + 1;
  }
  return [...said, ...chosen];
}

// The entry an answer to a question was grounded on: its name and its "what to do now" items,
// read from the curated answer's second block ("What to do now:" and "- " lines).
function adviceEntry(advice) {
  // A question the advisor did not understand has no entry to speak from: its answer asks again.
  if (advice?.understood === false) return null;
  const name = advice?.citations?.[0]?.name;
  if (!name) return null;
  const blocks = String(advice.curated_answer || advice.answer || "").split(/\n\s*\n/);
  const actions = (blocks[1] || "").split("\n").filter((line) => /^\s*[-•]\s+/.test(line))
    .map((line) => line.replace(/^\s*[-•]\s+/, ""));
  return { name, actions };
}

export function spokenText(data) {
  if (typeof data.spoken === "string" && data.spoken.trim()) return data.spoken;
  const language = data.language === "th" ? "th" : "en";
  const words = WORDS[language];
  const d = data.diagnosis;
  const grounded = adviceEntry(data.advice);
  const pieces = [];
  if (d && d.status !== "diagnosed") {
    pieces.push(d.message, retakeTip(d));
    if (!grounded) {
      if ((d.retake_tips || []).length) pieces.push(words.tips);
      return join(pieces, language);
    }
    const room = Math.max(BUDGET[language] - join(pieces, language).length, 0);
    pieces.push(...entrySpeech(grounded, language, { lead: words.about, room, most: 1 }));
  } else if (d && d.plan) {
    const healthy = /-healthy$/.test(d.plan.entry_id || "");
    pieces.push(...entrySpeech({ name: d.plan.name, actions: d.plan.actions }, language, {
      lead: healthy ? words.healthy : words.looks, caution: d.confidence_level === "moderate" ? [words.caution] : [],
      heading: healthy ? words.keep : words.do,
    }));
  } else if (d) {
    pieces.push(d.message);
  } else if (grounded) {
    pieces.push(...entrySpeech(grounded, language, { lead: words.about }));
  } else {
    return String(data.answer || "").replace(/^\s*[-•*]\s+/gm, "").split(/\s+/).join(" ").trim();
  }
  pieces.push(words.details);
  return join(pieces, language);
}
