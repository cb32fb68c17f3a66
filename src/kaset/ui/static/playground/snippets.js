// The curl and Python (openai SDK) equivalent of each request the playground makes. Each builder
// takes the same values the page sends, so the code shown is the request that was made. The key
// is never written out: snippets read it from $KASET_API_KEY (the page shows it masked).

export const KEY_VAR = "KASET_API_KEY";

// A shell word in single quotes (a ' inside becomes '\'').
export function shellQuote(text) {
  return `'${String(text).replace(/'/g, `'\\''`)}'`;
}

// A Python literal for JSON-like data. JSON string escapes are valid in Python strings.
export function pyLiteral(value, indent = "") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(value);
  if (typeof value === "string") return JSON.stringify(value);
  const inner = indent + "    ";
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    // Short lists of plain values stay on one line: [1], ["en", "es"].
    const flat = value.every((v) => v === null || typeof v !== "object");
    if (flat) { const line = `[${value.map((v) => pyLiteral(v)).join(", ")}]`; if (line.length <= 60) return line; }
    return `[\n${value.map((v) => inner + pyLiteral(v, inner)).join(",\n")},\n${indent}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pyLiteral(v, inner)}`).join(",\n")},\n${indent}}`;
}

// keyword=value lines of a Python call, skipping undefined values.
function pyArgs(args, indent = "    ") {
  return Object.entries(args).filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${indent}${k}=${pyLiteral(v, indent)},`).join("\n");
}

function pyClient(base) {
  return `import os\n\nfrom openai import OpenAI\n\nclient = OpenAI(base_url=${pyLiteral(base)}, api_key=os.environ["${KEY_VAR}"])\n`;
}

const AUTH = `-H "Authorization: Bearer $${KEY_VAR}"`;

function curlJson(url, body, extra = "") {
  return `curl ${extra}${url} \\\n  ${AUTH} \\\n  -H "Content-Type: application/json" \\\n  -d ${shellQuote(JSON.stringify(body, null, 2))}`;
}

// A JSON body with a file's base64 in `field`: piped, because a photo's base64 is longer than
// the shell allows for one argument.
function curlJsonWithFile(url, body, filename, makeSlot) {
  const marker = "\u0000FILE\u0000";
  const json = JSON.stringify(makeSlot(body, marker));
  const [before, after] = json.split(JSON.stringify(marker));
  return `{ printf '%s' ${shellQuote(before + '"')}; base64 -w0 ${shellQuote(filename)}; printf '%s' ${shellQuote('"' + after)}; } \\\n`
    + `  | curl -s ${url} \\\n  ${AUTH} \\\n  -H "Content-Type: application/json" \\\n  --data-binary @-`;
}

// POST /v1/audio/transcriptions. `fields`: {model, language?, response_format}.
export function transcribeSnippets(base, filename, fields) {
  const form = Object.entries(fields).filter(([, v]) => v !== undefined && v !== "")
    .map(([k, v]) => ` \\\n  -F ${shellQuote(`${k}=${v}`)}`).join("");
  const curl = `curl ${base}/audio/transcriptions \\\n  ${AUTH} \\\n  -F ${shellQuote(`file=@${filename}`)}${form}`;
  const textual = ["text", "srt", "vtt"].includes(fields.response_format);
  const args = { model: fields.model, file: undefined, language: fields.language || undefined,
                 response_format: fields.response_format };
  const python = `${pyClient(base)}\nwith open(${pyLiteral(filename)}, "rb") as audio:\n`
    + `    result = client.audio.transcriptions.create(\n        file=audio,\n${pyArgs(args, "        ")}\n    )\n`
    + (textual ? "print(result)\n" : "print(result.text)\n");
  return { curl, python };
}

// POST /v1/audio/speech. `body`: {model, input, voice?, speed, response_format}.
export function speechSnippets(base, body, outfile) {
  const curl = curlJson(`${base}/audio/speech`, body) + ` \\\n  -o ${shellQuote(outfile)}`;
  const python = `${pyClient(base)}\nwith client.audio.speech.with_streaming_response.create(\n${pyArgs(body)}\n) as response:\n`
    + `    response.stream_to_file(${pyLiteral(outfile)})\n`;
  return { curl, python };
}

// POST /v1/translate (Kaset's own route: the SDK's generic post()).
export function translateSnippets(base, body) {
  const curl = curlJson(`${base}/translate`, body);
  const python = `${pyClient(base)}\nresult = client.post("/translate", cast_to=object, body=${pyLiteral(body)})\n`
    + `print(result["translations"][0])\n`;
  return { curl, python };
}

// POST /v1/chat/completions with stream: true.
export function chatSnippets(base, body) {
  const curl = curlJson(`${base}/chat/completions`, body, "-N ");
  const { stream: _stream, ...rest } = body;
  const python = `${pyClient(base)}\nstream = client.chat.completions.create(\n${pyArgs({ ...rest, stream: true })}\n)\n`
    + `for chunk in stream:\n    if chunk.choices and chunk.choices[0].delta.content:\n`
    + `        print(chunk.choices[0].delta.content, end="", flush=True)\nprint()\n`;
  return { curl, python };
}

// POST /v2/models/{model}/infer (Open Inference Protocol) with the photo as IMAGE_BYTES.
export function classifyBody(model, base64, topK) {
  return {
    inputs: [{ name: "IMAGE_BYTES", datatype: "BYTES", shape: [1], data: [base64] }],
    outputs: [{ name: "PROBABILITIES", parameters: { classification: topK } }],
  };
}

export function classifySnippets(origin, model, filename, topK) {
  const url = `${origin}/v2/models/${encodeURIComponent(model)}/infer`;
  const curl = curlJsonWithFile(url, null, filename, (_, marker) => classifyBody(model, marker, topK));
  const body = classifyBody(model, "IMAGE", topK);
  const literal = pyLiteral(body).replace('"IMAGE"', "image");
  const python = `import base64\n${pyClient(origin + "/v1")}\nwith open(${pyLiteral(filename)}, "rb") as photo:\n`
    + `    image = base64.b64encode(photo.read()).decode()\n`
    + `result = client.post(${pyLiteral(url)}, cast_to=object, body=${literal})\n`
    + `for entry in result["outputs"][0]["data"]:  # "score:index:label"\n`
    + `    score, index, label = entry.split(":", 2)\n    print(f"{float(score):.1%}  {label}")\n`;
  return { curl, python };
}

// POST /v1/describe-image, JSON with the photo as base64.
export function describeSnippets(base, filename, options) {
  const curl = curlJsonWithFile(`${base}/describe-image`, null, filename, (_, marker) => ({ ...options, image: marker }));
  const literal = pyLiteral({ ...options, image: "IMAGE" }).replace('"IMAGE"', "image");
  const python = `import base64\n${pyClient(base)}\nwith open(${pyLiteral(filename)}, "rb") as photo:\n`
    + `    image = base64.b64encode(photo.read()).decode()\n`
    + `result = client.post("/describe-image", cast_to=object, body=${literal})\n`
    + `print(result["description"])\nfor label in result["labels"]:\n    print(f'{label["score"]:.1%}  {label["label"]}')\n`;
  return { curl, python };
}

// "ksk-abcd…wxyz": enough to recognise the key, not to use it.
export function maskKey(key) {
  if (!key) return "";
  return key.length <= 12 ? "…" : `${key.slice(0, 8)}…${key.slice(-4)}`;
}
