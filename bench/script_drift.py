"""Script drift: how often a chat model writes CJK into a Thai or English reply, with and without
the llama-cpp runtime's script guard (CJK tokens forbidden in conversations without CJK).

Two LlamaCppRuntime instances of the same model files (the catalog's params; one with
`script_guard: false`) answer the same Thai and English questions with the same seeds, at the
API's default temperature 0.7, one call at a time, the two sides alternating. Per side: the
share of replies holding a Han character, and holding any CJK (Han, kana, Hangul, CJK
punctuation such as "。", fullwidth forms); completion tokens/s (whole call, prompt included:
total tokens over total time, and the median of the calls). Also the guard's one-time cost:
the vocabulary scan at load.

    .venv/bin/python bench/script_drift.py [--model qwen2.5-coder-1.5b] [--seeds 2] [--max-tokens 96]
        [--models-dir var/test/models] [--json out.json]
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_MODELS_DIR,
    OtherLoad,
    begin_benchmark,
    median,
    other_load_summary,
    run_main,
    table,
    write_json,
)
from kaset.registry.catalog import Catalog
from kaset.registry.repository import ModelRepository
from kaset.runtimes.base import GenerationParams
from kaset.runtimes.llama_cpp import CJK_TEXT, LlamaCppRuntime, cjk_token_ids

HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff]")

THAI_QUESTIONS = [
    "เมืองหลวงของประเทศไทยคืออะไร",
    "ข้าวหอมมะลิปลูกที่ไหน",
    "ช่วยแนะนำวิธีปลูกข้าวให้ได้ผลผลิตดี",
    "ใบมะม่วงมีจุดสีดำ ควรทำอย่างไร",
    "ปุ๋ยอินทรีย์ต่างจากปุ๋ยเคมีอย่างไร",
    "ควรรดน้ำต้นทุเรียนบ่อยแค่ไหน",
    "อธิบายการปลูกมันสำปะหลังสั้นๆ",
    "เพลี้ยกระโดดสีน้ำตาลทำลายข้าวอย่างไร",
    "ช่วงไหนของปีเหมาะกับการปลูกข้าวโพด",
    "วิธีเก็บรักษาเมล็ดพันธุ์ให้นาน",
    "ดินเปรี้ยวแก้ไขได้อย่างไร",
    "บอกประโยชน์ของการปลูกพืชหมุนเวียน",
    "ยางพาราต้องกรีดตอนไหน",
    "ทำไมใบพริกถึงหงิก",
    "ช่วยเขียนคำแนะนำการเลี้ยงปลานิลในบ่อดิน",
    "กรุงเทพมหานครมีประชากรประมาณเท่าไร",
    "สรุปประวัติของสุโขทัยสั้นๆ",
    "ช่วยแต่งกลอนสั้นๆ เกี่ยวกับฤดูฝน",
    "อธิบายว่าคอมพิวเตอร์ทำงานอย่างไร",
    "แนะนำอาหารไทยที่ทำง่ายสามอย่าง",
]
ENGLISH_QUESTIONS = [
    "Name the capital of France.",
    "How do farmers grow rice in Thailand?",
    "What should I do about black spots on mango leaves?",
    "Explain the difference between organic and chemical fertiliser.",
    "How often should a durian tree be watered?",
    "Write a short poem about the rainy season.",
    "Summarise the history of Sukhothai in three sentences.",
    "What is crop rotation and why does it help?",
    "Give three tips for storing seeds.",
    "Explain how a computer works to a child.",
]


@dataclass
class Side:
    label: str
    runtime: LlamaCppRuntime
    replies: int = 0
    with_han: int = 0
    with_cjk: int = 0
    tokens: int = 0
    seconds: float = 0.0
    rates: list[float] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    by_language: dict[str, list[int]] = field(default_factory=dict)  # language -> [replies, with_cjk]

    def ask(self, language: str, question: str, params: GenerationParams) -> None:
        began = time.perf_counter()
        reply = self.runtime.chat([{"role": "user", "content": question}], params)
        seconds = time.perf_counter() - began
        self.replies += 1
        self.tokens += reply.completion_tokens
        self.seconds += seconds
        self.rates.append(reply.completion_tokens / seconds)
        drifted = bool(CJK_TEXT.search(reply.text))
        self.with_han += bool(HAN.search(reply.text))
        self.with_cjk += drifted
        counts = self.by_language.setdefault(language, [0, 0])
        counts[0] += 1
        counts[1] += drifted
        if drifted and len(self.examples) < 8:
            found = CJK_TEXT.search(reply.text)
            assert found is not None
            start = max(0, found.start() - 30)
            self.examples.append({"question": question, "seed": params.seed,
                                  "around": reply.text[start:found.end() + 30]})


def load(spec: Any, folder: Path, guard: bool) -> tuple[LlamaCppRuntime, float]:
    spec = spec.model_copy(update={"params": {**spec.params, "script_guard": guard}})
    runtime = LlamaCppRuntime(spec, folder)
    began = time.perf_counter()
    runtime.load()
    seconds = time.perf_counter() - began
    runtime.warmup()
    return runtime, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--seeds", type=int, default=2, help="sampled replies per question and side")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    info = begin_benchmark()

    spec = Catalog.load().resolve(args.model)
    repo = ModelRepository(args.models_dir)
    if not repo.is_installed(spec):
        print(f"{spec.id} is not installed in {args.models_dir}: kaset models install {spec.id}")
        return 1
    folder = repo.path_for(spec)
    plain, plain_load = load(spec, folder, guard=False)
    guarded, guarded_load = load(spec, folder, guard=True)
    began = time.perf_counter()
    forbidden = cjk_token_ids(guarded._loaded())
    scan_s = time.perf_counter() - began
    print(f"vocabulary scan: {len(forbidden)} CJK tokens forbidden of {guarded._loaded().n_vocab()}, {scan_s:.2f} s; "
          f"load {plain_load:.2f} s without the guard, {guarded_load:.2f} s with")

    sides = [Side("without guard", plain), Side("with guard", guarded)]
    questions = [("th", q) for q in THAI_QUESTIONS] + [("en", q) for q in ENGLISH_QUESTIONS]
    loads: list[float] = []
    step = 0
    for seed in range(1, args.seeds + 1):
        params = GenerationParams(max_tokens=args.max_tokens, temperature=0.7, seed=seed)
        for language, question in questions:
            # Alternate which side goes first, so neither always follows the other's warm cache.
            order = sides if step % 2 == 0 else sides[::-1]
            step += 1
            for side in order:
                other = OtherLoad()
                side.ask(language, question, params)
                loads.append(other.cores())
        print(f"seed {seed}: " + ", ".join(f"{s.label} {s.with_cjk}/{s.replies} with CJK" for s in sides), flush=True)
    plain.unload()
    guarded.unload()

    def share(n: int, of: int) -> str:
        return f"{n}/{of} ({100 * n / of:.0f}%)"

    rows = [[s.label, share(s.with_han, s.replies), share(s.with_cjk, s.replies),
             *(share(s.by_language[lang][1], s.by_language[lang][0]) for lang in ("th", "en")),
             f"{s.tokens / s.seconds:.1f}", f"{median(s.rates):.1f}", s.tokens] for s in sides]
    print(table(["side", "replies with Han", "with any CJK", "Thai with CJK", "English with CJK",
                 "tokens/s (total)", "tokens/s (median)", "tokens"], rows))
    plain_rate, guarded_rate = (s.tokens / s.seconds for s in sides)
    print(f"with guard / without, tokens/s: {guarded_rate / plain_rate:.3f}")
    print(other_load_summary(loads, info["nproc"]))
    for s in sides:
        for example in s.examples[:4]:
            print(f"  {s.label}: {example}")
    write_json(args.json, {
        "machine": info, "model": spec.id, "seeds": args.seeds, "max_tokens": args.max_tokens,
        "vocabulary_scan_s": scan_s, "forbidden_tokens": len(forbidden),
        "load_s": {"without": plain_load, "with": guarded_load},
        "sides": [{"label": s.label, "replies": s.replies, "with_han": s.with_han, "with_cjk": s.with_cjk,
                   "by_language": s.by_language, "tokens": s.tokens, "seconds": s.seconds,
                   "median_tokens_per_s": median(s.rates), "examples": s.examples} for s in sides],
        "other_load_cores": {"median": median(loads), "max": max(loads)},
    })
    return 0


if __name__ == "__main__":
    run_main(main)
