"""Dynamic batching with the real EfficientNet-Lite0 and multilingual-e5-small models.

The photos are real (skimage, scikit-learn) plus the synthetic mango-like leaves of
tests/fixtures/images.py. A spy wraps the runtime's list call to count model calls and
their sizes, and to note the threads they ran on and how many ran at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.registry.batching import DynamicBatcher, spread_tokens
from kaset.registry.catalog import Catalog
from kaset.registry.loaded_model import LoadedModel
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.runtimes.base import Embedder, Embeddings, ImageClassifier
from tests.fixtures.images import mango_like_leaf, photo

module_loop = pytest.mark.asyncio(loop_scope="module")

PHOTOS = ["chelsea", "coffee", "rocket", "astronaut", "flower", "china"]
TEXTS = ["The farmer plants rice in the wet season.", "ชาวนาปลูกข้าวในนา", "Cassava grows in sandy soil.",
         "โรคแอนแทรคโนสในมะม่วง", "Durian trees take years to bear fruit.", "Mango anthracnose spots on leaves",
         "ฝนตกหนักในภาคใต้", "Brown planthoppers destroy rice.", "How do I treat powdery mildew?",
         "ปุ๋ยราคาแพงขึ้น", "Water buffalo ploughed the fields.", "Sooty mould grows on honeydew.",
         "ทุเรียนหมอนทอง", "Drip irrigation saves water.", "Stem end rot after harvest", "มันสำปะหลังใบด่าง"]


class Spy:
    """Stands in for one runtime method: counts calls and sizes, notes threads and overlap."""

    def __init__(self, original: Callable[[list[Any]], Any]) -> None:
        self.original = original
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[Any]) -> Any:
        with self._lock:
            self.sizes.append(len(items))
            self.threads.add(threading.current_thread().name)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            return self.original(items)
        finally:
            with self._lock:
                self.running -= 1


@contextmanager
def spy(runtime: Any, method: str) -> Iterator[Spy]:
    watcher = Spy(getattr(runtime, method))
    setattr(runtime, method, watcher)  # an instance attribute shadows the class's method
    try:
        yield watcher
    finally:
        delattr(runtime, method)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """16 different photos: 6 real ones, their mirror images, and 4 mango-like leaves."""
    leaves = [mango_like_leaf(seed=s, spots=s * 5) for s in range(4)]
    real = [photo(n) for n in PHOTOS]
    return [*real, *leaves, *(np.ascontiguousarray(p[:, ::-1]) for p in real)]


@pytest.fixture(scope="module")
async def manager(catalog: Catalog, installed: Callable[[str], object],
                  models_dir: Path) -> AsyncIterator[ModelManager]:
    installed("efficientnet-lite0")
    installed("e5-small")
    manager = ModelManager(catalog, ModelRepository(models_dir))
    yield manager
    await manager.close()


async def classifier(manager: ModelManager) -> LoadedModel:
    model = await manager.get("efficientnet-lite0", "classify")
    assert model.batcher is not None, "efficientnet-lite0 batches (catalog: batching)"
    return model


async def one_by_one(model: LoadedModel, items: list[Any], method: str) -> list[Any]:
    """The reference: the runtime on one item at a time, in the model's executor, no batcher."""
    fn = getattr(model.runtime, method)
    return [await model.run(fn, [item]) for item in items]


@module_loop
async def test_concurrent_classify_equals_one_by_one_in_fewer_calls(manager: ModelManager,
                                                                   images: list[np.ndarray]) -> None:
    model = await classifier(manager)
    expected = [p[0] for p in await one_by_one(model, images, "classify")]
    before = model.batcher.stats.snapshot() if model.batcher else {}
    with spy(model.runtime, "classify") as calls:
        got = await asyncio.gather(*(model.batch("classify", [image]) for image in images))
    assert len(calls.sizes) < len(images), calls.sizes
    assert sum(calls.sizes) == len(images) and max(calls.sizes) <= 16
    for (row,), want in zip(got, expected, strict=True):
        np.testing.assert_allclose(row, want, rtol=1e-4, atol=1e-6)
    labels = model.as_(ImageClassifier).labels
    assert "tabby" in labels[int(np.argmax(got[0][0]))] or "cat" in labels[int(np.argmax(got[0][0]))]
    # Model code ran on the model's own executor thread, never on the event loop's.
    assert calls.threads and all(name.startswith("model-efficientnet-lite0") for name in calls.threads)
    assert threading.current_thread().name not in calls.threads
    after = model.batcher.stats.snapshot() if model.batcher else {}
    assert after["requests"] - before["requests"] == len(images)
    assert after["batches"] - before["batches"] == len(calls.sizes)


@module_loop
async def test_a_request_of_several_images_gets_its_own_rows(manager: ModelManager,
                                                           images: list[np.ndarray]) -> None:
    model = await classifier(manager)
    expected = np.stack([p[0] for p in await one_by_one(model, images[:7], "classify")])
    with spy(model.runtime, "classify") as calls:
        first, second, third = await asyncio.gather(model.batch("classify", images[:3]),
                                                    model.batch("classify", images[3:4]),
                                                    model.batch("classify", images[4:7]))
    assert len(calls.sizes) < 3
    np.testing.assert_allclose(np.stack([*first, *second, *third]), expected, rtol=1e-4, atol=1e-6)


@module_loop
async def test_concurrent_embeddings_equal_one_by_one_with_exact_tokens(manager: ModelManager) -> None:
    model = await manager.get("e5-small", "embed")
    assert model.batcher is not None
    expected: list[Embeddings] = await one_by_one(model, TEXTS, "embed")
    with spy(model.runtime, "embed") as calls:
        got = await asyncio.gather(*(model.batch("embed", [text]) for text in TEXTS))
    assert len(calls.sizes) < len(TEXTS), calls.sizes
    for (one,), want in zip(got, expected, strict=True):
        np.testing.assert_allclose(one.vectors, want.vectors, rtol=1e-4, atol=1e-5)
        assert one.prompt_tokens == want.prompt_tokens  # billed as if it had run alone
    assert np.dot(got[0][0].vectors[0], got[1][0].vectors[0]) > np.dot(got[0][0].vectors[0], got[6][0].vectors[0])


@module_loop
async def test_max_batch_size_is_respected_and_one_call_runs_at_a_time(manager: ModelManager,
                                                                     images: list[np.ndarray]) -> None:
    model = await classifier(manager)
    batcher = DynamicBatcher("test-max4", model.runtime, model.executor, max_batch_size=4, max_wait_ms=20)
    try:
        requests = [[images[i % 16]] * (1 + i % 3) for i in range(20)]  # 1, 2 or 3 images each
        oversized = images[:6]
        with spy(model.runtime, "classify") as calls:
            results = await asyncio.gather(*(batcher.submit("classify", r) for r in requests),
                                           batcher.submit("classify", oversized))
    finally:
        await batcher.stop()
    assert [len(r) for r in results] == [len(r) for r in [*requests, oversized]]
    # Every merged call fits in 4 images; the 6-image request ran alone, whole.
    assert 6 in calls.sizes and all(size <= 4 for size in calls.sizes if size != 6)
    assert calls.sizes.count(6) == 1 and sum(calls.sizes) == sum(len(r) for r in requests) + 6
    assert len(calls.sizes) < len(requests)
    assert calls.max_running == 1  # max_concurrent 1: the model's limit holds under batching
    stats = batcher.stats.snapshot()
    assert stats["batch_sizes"][">4"] == 1 and stats["requests"] == 21
    assert set(stats["batch_sizes"]) <= {"1", "2", "3", "4", ">4"}


@module_loop
async def test_a_bad_image_fails_only_its_own_request(manager: ModelManager, images: list[np.ndarray]) -> None:
    model = await classifier(manager)
    expected = [p[0] for p in await one_by_one(model, images[:8], "classify")]
    bad = np.zeros((32, 32, 4), dtype=np.uint8)  # RGBA: the runtime refuses it with InvalidRequest
    assert model.batcher is not None
    fallbacks = model.batcher.stats.fallbacks
    batch = [[image] for image in images[:4]] + [[bad]] + [[image] for image in images[4:8]]
    got = await asyncio.gather(*(model.batch("classify", items) for items in batch), return_exceptions=True)
    assert isinstance(got[4], InvalidRequest) and "RGB uint8" in got[4].message
    good = [g for i, g in enumerate(got) if i != 4]
    for result, want in zip(good, expected, strict=True):
        assert not isinstance(result, BaseException), result
        np.testing.assert_allclose(result[0], want, rtol=1e-4, atol=1e-6)
    assert model.batcher.stats.fallbacks == fallbacks + 1


@module_loop
async def test_an_empty_text_fails_only_its_own_request(manager: ModelManager) -> None:
    model = await manager.get("e5-small", "embed")
    got = await asyncio.gather(*(model.batch("embed", [t]) for t in [TEXTS[0], "", TEXTS[1]]),
                               return_exceptions=True)
    assert isinstance(got[1], InvalidRequest)
    assert all(isinstance(g, list) and g[0].vectors.shape == (1, model.as_(Embedder).dimensions)
               for g in (got[0], got[2]))


@module_loop
async def test_a_lone_request_waits_at_most_max_wait(manager: ModelManager, images: list[np.ndarray]) -> None:
    model = await classifier(manager)
    max_wait_ms = 60.0
    batcher = DynamicBatcher("test-wait", model.runtime, model.executor, max_batch_size=16, max_wait_ms=max_wait_ms)
    try:
        stats = batcher.stats
        # Idle and never busy: no wait at all.
        started = time.perf_counter()
        await batcher.submit("classify", [images[0]])
        idle_elapsed = time.perf_counter() - started
        assert stats.queue_wait_seconds < 0.01, stats
        assert idle_elapsed < stats.call_seconds + 0.03
        # After a burst the batcher expects company, so a straggler waits, but no longer than max_wait.
        await asyncio.gather(*(batcher.submit("classify", [image]) for image in images[:8]))
        batches, waited, called = stats.batches, stats.queue_wait_seconds, stats.call_seconds
        started = time.perf_counter()
        await batcher.submit("classify", [images[1]])
        elapsed = time.perf_counter() - started
    finally:
        await batcher.stop()
    assert stats.batches == batches + 1
    waited, called = stats.queue_wait_seconds - waited, stats.call_seconds - called
    assert 0 < waited <= max_wait_ms / 1000 + 0.015, waited  # 15 ms of event-loop scheduling slack
    assert elapsed <= max_wait_ms / 1000 + called + 0.03, (elapsed, called)


@module_loop
async def test_a_cancelled_request_does_not_disturb_the_others(manager: ModelManager,
                                                              images: list[np.ndarray]) -> None:
    model = await classifier(manager)
    tasks = [asyncio.create_task(model.batch("classify", [image])) for image in images[:6]]
    await asyncio.sleep(0)
    tasks[2].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    assert all(isinstance(d, list) and d[0].shape == (1000,) for i, d in enumerate(done) if i != 2)


@module_loop
async def test_a_broken_collector_fails_its_waiters_and_restarts(manager: ModelManager, images: list[np.ndarray],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model = await classifier(manager)
    batcher = DynamicBatcher("test-broken", model.runtime, model.executor, max_batch_size=4, max_wait_ms=1)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(batcher, "_take", lambda method: 1 / 0)
            with pytest.raises(ModelUnavailable):
                await asyncio.wait_for(batcher.submit("classify", [images[0]]), 10)
        (row,) = await asyncio.wait_for(batcher.submit("classify", [images[0]]), 10)
        assert row.shape == (1000,)
    finally:
        await batcher.stop()


async def test_unload_drains_then_stops_the_batcher(catalog: Catalog, installed: Callable[[str], object],
                                                    models_dir: Path) -> None:
    installed("efficientnet-lite0")
    manager = ModelManager(catalog, ModelRepository(models_dir), warmup=False)
    try:
        model = await manager.load("efficientnet-lite0")
        batcher = model.batcher
        assert batcher is not None and not batcher.closed
        image = photo("coffee")
        pending = [asyncio.create_task(model.batch("classify", [image])) for _ in range(5)]
        await asyncio.sleep(0)  # the requests are queued or running
        assert await manager.unload("efficientnet-lite0")
        # Requests that were already queued were answered before the weights went away.
        assert all(p.done() and p.result()[0].shape == (1000,) for p in pending)
        assert batcher.closed
        assert all(task.done() for task in batcher._collectors.values())
        with pytest.raises(ModelUnavailable):
            await model.batch("classify", [image])
        assert manager.state(model.spec) == "installed"
    finally:
        await manager.close()


def test_models_without_batching_call_the_runtime_directly(catalog: Catalog) -> None:
    assert catalog.resolve("smollm2-135m").batching is None
    for name in ("efficientnet-lite0", "mango-disease@1", "mango-disease@2", "e5-small"):
        batching = catalog.resolve(name).batching
        assert batching is not None and batching.max_batch_size == 16 and batching.max_wait_ms == 5


async def test_echo_embeds_through_batch_without_a_batcher(catalog: Catalog, models_dir: Path) -> None:
    manager = ModelManager(catalog, ModelRepository(models_dir))
    try:
        model = await manager.get("echo", "embed")
        assert model.batcher is None
        per_text = await model.batch("embed", ["one two", "three"])
        assert [e.prompt_tokens for e in per_text] == [2, 1]
    finally:
        await manager.close()


def test_spread_tokens_keeps_the_total() -> None:
    assert spread_tokens(10, [1, 1, 1]) == [4, 3, 3] or sorted(spread_tokens(10, [1, 1, 1])) == [3, 3, 4]
    assert sum(spread_tokens(7, [5, 0, 2])) == 7
    assert spread_tokens(0, [3]) == [0] and spread_tokens(5, []) == []
