"""The model lifecycle with real models: idle unload, LRU eviction under a memory budget,
pinning, never unloading a busy model, reloading on next use, the bounded wait queue, and the
lifecycle metrics.

Calls that must stay in flight for a while are real calls through `LoadedModel.run` (or a real
runtime method) that wait on a gate the test opens: the policy only sees that a call is running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest

from kaset.errors import ModelUnavailable
from kaset.metrics import Metrics
from kaset.registry import manager as manager_module
from kaset.registry.catalog import Catalog
from kaset.registry.lifecycle import (
    MB,
    LifecyclePolicy,
    MemoryBudgetExceeded,
    ModelOverloaded,
    folder_bytes,
    start_idle_sweeper,
)
from kaset.registry.loaded_model import LoadedModel
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from tests.fixtures.images import photo

GATE_TIMEOUT_S = 20


@pytest.fixture(scope="module", autouse=True)
def _models(installed: Callable[[str], object]) -> None:
    for model_id in ("e5-small", "efficientnet-lite0", "whisper-tiny.en"):
        installed(model_id)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return photo("chelsea")


def variant(catalog: Catalog, **updates: dict[str, Any]) -> Catalog:
    """The real catalog with some entries changed (updates by model id)."""
    return Catalog([spec.model_copy(update=updates.get(spec.id, {})) for spec in catalog])


class Lifecycle:
    """A manager with a policy and a metrics observer, closed (gates opened first) at the end."""

    def __init__(self, catalog: Catalog, models_dir: Path) -> None:
        self.catalog = catalog
        self.models_dir = models_dir
        self.gates: list[threading.Event] = []
        self.managers: list[ModelManager] = []

    def manager(self, catalog: Catalog | None = None, **policy: Any) -> tuple[ModelManager, Metrics]:
        metrics = Metrics()
        manager = ModelManager(catalog or self.catalog, ModelRepository(self.models_dir), warmup=False,
                               policy=LifecyclePolicy(**policy), observer=metrics)
        metrics.models = manager
        self.managers.append(manager)
        return manager, metrics

    async def hold(self, model: LoadedModel) -> asyncio.Task[Any]:
        """A call in the model's executor that lasts until `release()`."""
        gate = threading.Event()
        self.gates.append(gate)
        before = model.in_flight
        task = asyncio.ensure_future(model.run(gate.wait, GATE_TIMEOUT_S))
        await asyncio.sleep(0)  # the call starts: admitted and counted
        assert model.in_flight == before + 1
        return task

    def release(self) -> None:
        for gate in self.gates:
            gate.set()

    async def close(self) -> None:
        self.release()
        for manager in self.managers:
            await manager.close()


@pytest.fixture
async def life(catalog: Catalog, models_dir: Path) -> AsyncIterator[Lifecycle]:
    lifecycle = Lifecycle(catalog, models_dir)
    try:
        yield lifecycle
    finally:
        await lifecycle.close()


@pytest.fixture
def files_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Account each model by its files' size alone (RSS growth reads 0): RSS growth depends on what
    the allocator kept from earlier loads, and the eviction tests need exact sizes."""
    monkeypatch.setattr(manager_module, "process_rss_bytes", lambda: 0)


def exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def sample(text: str, series: str) -> float:
    """The value of one series (name and labels, as exposed) in a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} is not in the exposition")


def files(manager: ModelManager, name: str) -> int:
    spec = manager.resolve(name)
    return folder_bytes(manager.repository.path_for(spec))


async def wait_for(condition: Callable[[], bool], within: float = 5.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, "timed out"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


# --- idle unload ---------------------------------------------------------------------------------


async def test_an_idle_model_is_unloaded_after_its_ttl_and_reloads_on_next_use(life: Lifecycle,
                                                                              image: np.ndarray) -> None:
    manager, metrics = life.manager(idle_unload_s=0.4)
    model = await manager.get("efficientnet-lite0", "classify")
    (first,) = await model.batch("classify", [image])
    used_at = time.monotonic()
    sweeper = start_idle_sweeper(manager)
    assert sweeper is not None
    try:
        await wait_for(lambda: manager.state(model.spec) != "loaded")
        assert time.monotonic() - used_at >= 0.4, "unloaded before its TTL"
    finally:
        sweeper.cancel()
    await wait_for(lambda: manager.state(model.spec) == "installed")
    assert manager.unload_reason(model.spec) == "idle" and manager.status(model.spec).reason == "idle"
    # A request still holding the old object is told to retry, not crashed into a closed executor.
    with pytest.raises(ModelUnavailable, match="retry"):
        await model.batch("classify", [image])
    again = await manager.get("efficientnet-lite0", "classify")
    assert again is not model and manager.state(again.spec) == "loaded" and manager.unload_reason(again.spec) is None
    (second,) = await again.batch("classify", [image])
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-6)
    text = exposition(metrics)
    assert 'kaset_model_loads_total{model="efficientnet-lite0",reason="request"} 2.0' in text
    assert 'kaset_model_unloads_total{model="efficientnet-lite0",reason="idle"} 1.0' in text
    # Every merged call of the batched model was observed, with its size.
    assert 'kaset_batch_size_count{model="efficientnet-lite0"} 2.0' in text


async def test_pinned_models_and_a_zero_ttl_stay_loaded(life: Lifecycle) -> None:
    catalog = variant(life.catalog, **{"efficientnet-lite0": {"idle_unload_s": 0}})
    manager, _ = life.manager(catalog, idle_unload_s=0.2, pinned=frozenset({"text-embedding-3-small"}))
    e5 = await manager.get("e5-small", "embed")  # pinned by its alias
    vision = await manager.get("efficientnet-lite0", "classify")
    echo = await manager.get("echo", "chat")
    assert e5.pinned and manager.status(e5.spec).pinned and not vision.pinned
    await asyncio.sleep(0.3)
    assert await manager.sweep_idle() == ["echo"]
    assert manager.state(e5.spec) == "loaded" and manager.state(vision.spec) == "loaded"
    assert manager.state(echo.spec) == "installed"
    assert manager.policy.sweep_interval(catalog) == pytest.approx(0.05)


async def test_a_model_with_calls_running_or_queued_is_never_idle_unloaded(life: Lifecycle) -> None:
    manager, _ = life.manager(idle_unload_s=0.2)
    model = await manager.get("whisper-tiny.en", "transcribe")
    running = await life.hold(model)
    queued = await life.hold(model)  # max_concurrent 1: this one waits for the executor
    assert model.in_flight == 2 and model.queued == 1
    model.last_used -= 10  # long past its TTL, but busy
    assert await manager.sweep_idle() == []
    assert manager.state(model.spec) == "loaded"
    life.release()
    assert await asyncio.gather(running, queued) == [True, True]
    # The calls just ended: idle again only after a full TTL.
    assert await manager.sweep_idle() == []
    await asyncio.sleep(0.25)
    assert await manager.sweep_idle() == ["whisper-tiny.en"]


# --- memory budget -------------------------------------------------------------------------------


@pytest.mark.usefixtures("files_only")
async def test_lru_eviction_unloads_the_least_recently_used_first(life: Lifecycle, image: np.ndarray) -> None:
    manager, metrics = life.manager(memory_budget_bytes=100_000 * MB)
    e5 = await manager.get("e5-small", "embed")
    vision = await manager.get("efficientnet-lite0", "classify")
    await e5.batch("embed", ["rice"])  # e5-small is now used more recently than the vision model
    e5_bytes, vision_bytes, whisper_bytes = (files(manager, n) for n in ("e5-small", "efficientnet-lite0",
                                                                          "whisper-tiny.en"))
    assert e5.memory_bytes == e5_bytes > 0 and vision.memory_bytes == vision_bytes > 0
    # Room for any two of the three, not for all of them.
    budget = e5_bytes + vision_bytes + whisper_bytes - 1
    manager.policy = dataclasses.replace(manager.policy, memory_budget_bytes=budget)
    whisper = await manager.get("whisper-tiny.en", "transcribe")
    assert [m.spec.id for m in manager.loaded()] == ["e5-small", "whisper-tiny.en"]
    assert manager.unload_reason(vision.spec) == "lru" and vision.closed
    assert manager.memory_used() == e5_bytes + whisper_bytes <= budget
    # The evicted model loads again on its next use, evicting the least recently used one now.
    vision = await manager.get("efficientnet-lite0", "classify")
    assert (await vision.batch("classify", [image]))[0].shape == (1000,)
    assert {m.spec.id for m in manager.loaded()} == {"whisper-tiny.en", "efficientnet-lite0"}
    assert manager.unload_reason(e5.spec) == "lru" and manager.state(whisper.spec) == "loaded"
    text = exposition(metrics)
    assert 'kaset_model_unloads_total{model="efficientnet-lite0",reason="lru"} 1.0' in text
    assert 'kaset_model_unloads_total{model="e5-small",reason="lru"} 1.0' in text
    assert sample(text, "kaset_model_memory_budget_bytes") == budget
    assert sample(text, 'kaset_model_memory_estimate_bytes{model="whisper-tiny.en"}') == whisper_bytes


@pytest.mark.usefixtures("files_only")
async def test_pinned_and_busy_models_are_not_evicted(life: Lifecycle) -> None:
    manager, metrics = life.manager(memory_budget_bytes=100_000 * MB, pinned=frozenset({"e5-small"}))
    e5 = await manager.get("e5-small", "embed")  # pinned, and the least recently used
    vision = await manager.get("efficientnet-lite0", "classify")
    budget = sum(files(manager, n) for n in ("e5-small", "efficientnet-lite0", "whisper-tiny.en")) - 1
    manager.policy = dataclasses.replace(manager.policy, memory_budget_bytes=budget)
    call = await life.hold(vision)
    with pytest.raises(MemoryBudgetExceeded) as refused:
        await manager.get("whisper-tiny.en", "transcribe")
    error = refused.value
    assert error.status_code == 503 and error.code == "memory_budget_exceeded"
    assert "KASET_MODEL_MEMORY_BUDGET_MB" in error.message and f"{round(budget / MB, 1)} MB" in error.message
    assert "e5-small" in error.message and "pinned" in error.message and "busy" in error.message
    # Nothing was unloaded in vain.
    assert {m.spec.id for m in manager.loaded()} == {"e5-small", "efficientnet-lite0"} and not vision.closed
    life.release()
    assert await call is True
    await manager.get("whisper-tiny.en", "transcribe")
    assert {m.spec.id for m in manager.loaded()} == {"e5-small", "whisper-tiny.en"} and e5.pinned
    assert 'kaset_limit_rejections_total{limit="model_memory_budget",scope="model"} 1.0' in exposition(metrics)


async def test_a_budget_too_small_for_the_model_refuses_it_with_503(life: Lifecycle) -> None:
    manager, _ = life.manager()
    echo = await manager.get("echo", "embed")
    manager.policy = dataclasses.replace(manager.policy, memory_budget_bytes=1 * MB)
    with pytest.raises(MemoryBudgetExceeded, match=r"more than the whole budget") as refused:
        await manager.get("e5-small", "embed")
    assert "1.0 MB" in refused.value.message and "KASET_MODEL_MEMORY_BUDGET_MB" in refused.value.message
    spec = manager.resolve("e5-small")
    assert manager.state(spec) == "installed" and manager.state(echo.spec) == "loaded"


async def test_memory_is_measured_at_load(life: Lifecycle) -> None:
    manager, _ = life.manager()
    e5 = await manager.get("e5-small", "embed")
    assert e5.file_bytes == files(manager, "e5-small") > 0 and e5.rss_delta_bytes >= 0
    assert e5.memory_bytes == max(e5.file_bytes, e5.rss_delta_bytes)
    status = manager.status(e5.spec)
    assert status.memory_mb == round(e5.memory_bytes / MB, 1) and status.state == "loaded"
    assert status.last_used is not None and abs(status.last_used - time.time()) < 60
    await manager.unload("e5-small")
    after = manager.status(e5.spec)
    # The last measurement stays as the estimate for the next load.
    assert after.state == "installed" and after.memory_mb == status.memory_mb and after.reason == "admin"


# --- the bounded wait queue ------------------------------------------------------------------------


async def test_a_full_queue_refuses_at_once_with_retry_after(life: Lifecycle) -> None:
    catalog = variant(life.catalog, **{"whisper-tiny.en": {"max_queue": 1}})
    manager, metrics = life.manager(catalog)
    model = await manager.get("whisper-tiny.en", "transcribe")
    assert (model.max_queue, model.capacity) == (1, 2)
    running = await life.hold(model)
    queued = await life.hold(model)
    started = time.monotonic()
    with pytest.raises(ModelOverloaded) as refused:
        await model.run(time.sleep, 0)
    assert time.monotonic() - started < 0.5, "refused at once, not after waiting"
    error = refused.value
    assert error.status_code == 429 and error.code == "model_overloaded" and error.error_type == "rate_limit_error"
    # No call has finished yet: 1 s a call is assumed, and two rounds of calls are ahead.
    assert error.headers == {"Retry-After": "2"}
    assert "max_queue 1" in error.message
    with pytest.raises(ModelOverloaded):
        await anext(aiter(model.stream(lambda: iter([1]))))
    hold_s = 1.2
    await asyncio.sleep(hold_s)
    life.release()
    await asyncio.gather(running, queued)
    # Now the estimate follows the model's recent call time: 2 rounds of calls ahead of a new one.
    assert model.mean_call_s > 0.5
    running = await life.hold(model)
    queued = await life.hold(model)
    with pytest.raises(ModelOverloaded) as refused:
        await model.run(time.sleep, 0)
    assert refused.value.headers == {"Retry-After": str(math.ceil(2 * model.mean_call_s))}
    life.release()
    await asyncio.gather(running, queued)
    text = exposition(metrics)
    assert 'kaset_limit_rejections_total{limit="model_queue_full",scope="model"} 3.0' in text
    assert 'kaset_model_max_queue{model="whisper-tiny.en"} 1.0' in text


async def test_a_batched_model_admits_a_full_batch_plus_its_queue(life: Lifecycle, image: np.ndarray) -> None:
    catalog = variant(life.catalog, **{"efficientnet-lite0": {"max_queue": 1}})
    manager, metrics = life.manager(catalog)
    model = await manager.get("efficientnet-lite0", "classify")
    assert model.batcher is not None and model.capacity == model.batcher.max_batch_size + 1
    gate = threading.Event()
    life.gates.append(gate)
    classify = model.runtime.classify  # type: ignore[attr-defined]

    def gated(images: list[Any]) -> Any:
        gate.wait(GATE_TIMEOUT_S)
        return classify(images)

    model.runtime.classify = gated  # type: ignore[attr-defined]
    try:
        calls = [asyncio.ensure_future(model.batch("classify", [image])) for _ in range(model.capacity)]
        await wait_for(lambda: model.in_flight == model.capacity and model.queued == 1)
        with pytest.raises(ModelOverloaded):
            await model.batch("classify", [image])
        gate.set()
        results = await asyncio.gather(*calls)
    finally:
        del model.runtime.classify  # type: ignore[attr-defined]
    assert len(results) == model.batcher.max_batch_size + 1 and model.in_flight == 0
    assert 'kaset_model_queue_depth{model="efficientnet-lite0"} 0.0' in exposition(metrics)


async def test_inline_models_never_queue(life: Lifecycle) -> None:
    catalog = variant(life.catalog, echo={"max_queue": 0})
    manager, _ = life.manager(catalog)
    echo = await manager.get("echo", "embed")
    results = await asyncio.gather(*(echo.batch("embed", [f"text {i}"]) for i in range(200)))
    assert len(results) == 200 and echo.queued == 0
