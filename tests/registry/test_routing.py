"""The router on its own: target choice, fallbacks, retries and circuit breakers.

The models are echo runtimes (built in, no weights) declared under several ids and versions;
what a "call" does is decided by the test's `fn`, which raises the errors a runtime, a provider
adapter or the model's admission queue would raise. The HTTP path, with local fakes of the
providers' APIs, is in tests/api/test_routing.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kaset.errors import (
    InvalidRequest,
    KasetError,
    ModelNotFound,
    ModelUnavailable,
    Overloaded,
    PermissionDenied,
    RateLimited,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from kaset.metrics import Metrics, current_metrics
from kaset.registry.breakers import Breaker, CircuitOpen, upstream_of
from kaset.registry.catalog import Catalog, ModelSpec, RouteSpec
from kaset.registry.fallbacks import fallback_reason
from kaset.registry.lifecycle import ModelOverloaded
from kaset.registry.loaded_model import LoadedModel
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.registry.routing import Router, caller_key
from kaset.weighted import hash_point


def _echo(model_id: str, version: str = "1", **extra: Any) -> ModelSpec:
    return ModelSpec.model_validate({"id": model_id, "version": version, "tasks": ["chat", "embed"],
                                     "runtime": "echo", "license": "test", "source": {"kind": "builtin"},
                                     "max_concurrent": 8, **extra})


def _route(**fields: Any) -> RouteSpec:
    return RouteSpec.model_validate(fields)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Script:
    """fn for Router.call: per model id (version 1), a list of outcomes (an exception to raise,
    a coroutine function to await, or a value); the last one repeats. Counts calls per key."""

    def __init__(self, **outcomes: list[Any]) -> None:
        self.outcomes = {f"{model_id}@1": list(v) for model_id, v in outcomes.items()}
        self.calls: Counter[str] = Counter()

    async def __call__(self, model: LoadedModel) -> str:
        key = model.spec.key
        self.calls[key] += 1
        plan = self.outcomes.get(key, ["ok"])
        outcome = plan.pop(0) if len(plan) > 1 else plan[0]
        if isinstance(outcome, BaseException):
            raise outcome
        if callable(outcome):
            return str(await outcome())
        return f"{outcome} from {key}"


@pytest.fixture
def catalog() -> Catalog:
    specs = [_echo("a"), _echo("a", "2"), _echo("b"), _echo("c"),
             _echo("gpt-x", params={"base_url": "https://user:secret@llm.example:8443/v1/"}),
             _echo("gpt-y", params={"base_url": "https://llm.example:8443/v1"}),
             ModelSpec.model_validate({"id": "absent", "tasks": ["chat"], "runtime": "echo", "license": "test",
                                       "source": {"kind": "path", "path": "/nonexistent/kaset-test"},
                                       "files": [{"name": "w.bin", "sha256": "0" * 64}]}),
             _echo("embedder", tasks=["embed"])]
    routes = [
        _route(name="split", targets=[{"model": "a@1", "weight": 90}, {"model": "a@2", "weight": 10}]),
        _route(name="guarded", targets=[{"model": "a"}], fallbacks=["b", "c"]),
        _route(name="retrying", targets=[{"model": "a"}], fallbacks=["b"], retries=2),
        _route(name="slow", targets=[{"model": "a"}], fallbacks=["b"], timeout_s=0.05),
        _route(name="missing", targets=[{"model": "absent"}], fallbacks=["b"]),
        _route(name="mixed", targets=[{"model": "embedder"}], fallbacks=["b"]),
    ]
    return Catalog(specs, routes)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def router(catalog: Catalog, tmp_path: Path, clock: Clock, sleeps: list[float]) -> Router:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    manager = ModelManager(catalog, ModelRepository(tmp_path), warmup=False)
    return Router(manager, breaker_failures=3, breaker_cooldown_s=10.0, retry_backoff_s=0.2, retry_max_wait_s=5.0,
                  sleep=sleep, clock=clock, rng=random.Random(7).random)


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    metrics = Metrics()
    token = current_metrics.set(metrics)
    yield metrics
    current_metrics.reset(token)


async def _call(router: Router, name: str, fn: Callable[[LoadedModel], Awaitable[str]], **kw: Any) -> tuple[str, str]:
    result, spec = await router.call(name, "chat", fn, **kw)
    return result, spec.key


# --- choosing a target ---------------------------------------------------------------------------


def test_weights_split_about_90_10(router: Router) -> None:
    route = router.routes["split"]
    picks = Counter(router.pick(route, None) for _ in range(1000))
    assert set(picks) == {"a@1", "a@2"}
    assert 860 <= picks["a@1"] <= 940, picks


def test_sticky_key_keeps_a_caller_on_one_target(router: Router) -> None:
    route = router.routes["split"]
    for key in ("alice", "bob", "k:17"):
        assert len({router.pick(route, key) for _ in range(50)}) == 1
    # Over many callers the hash still splits by weight.
    by_caller = Counter(router.pick(route, f"caller-{n}") for n in range(1000))
    assert 860 <= by_caller["a@1"] <= 940, by_caller
    assert 0 <= hash_point("split", "alice") < 1 and hash_point("split", "alice") != hash_point("other", "alice")


async def test_sticky_caller_through_call(router: Router) -> None:
    fn = Script()
    served = {(await _call(router, "split", fn, caller=lambda: "carol"))[1] for _ in range(20)}
    assert len(served) == 1


def test_caller_key_sources() -> None:
    def request(headers: dict[str, str], key: Any = None) -> Any:
        return SimpleNamespace(headers=headers, state=SimpleNamespace(key=key))

    assert caller_key(request({"x-kaset-ab-key": "user-42"})) == "h:user-42"
    assert caller_key(request({}, SimpleNamespace(key_id=7, user_id=3))) == "k:7"
    assert caller_key(request({}, SimpleNamespace(key_id=None, user_id=3))) == "u:3"
    assert caller_key(request({})) is None


def test_weight_zero_target_is_never_picked(catalog: Catalog, tmp_path: Path) -> None:
    route = _route(name="r", targets=[{"model": "a", "weight": 0}, {"model": "b", "weight": 1}])
    router = Router(ModelManager(catalog, ModelRepository(tmp_path)))
    assert {router.pick(route, None) for _ in range(200)} == {"b"}


# --- fallbacks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("error,reason", [
    (UpstreamError("HTTP 500 upstream"), "error"),
    (UpstreamRateLimited("429 upstream", retry_after=7), "rate_limited"),
    (ModelOverloaded("queue full", retry_after=1.0), "overloaded"),
    (Overloaded("busy"), "overloaded"),
    (UpstreamTimeout("took too long"), "timeout"),
    (RuntimeError("the runtime crashed"), "error"),
    (OSError(5, "Input/output error"), "error"),  # what a C engine's failure looks like
])
async def test_fallback_on_server_side_errors(router: Router, metrics: Metrics, error: Exception,
                                              reason: str) -> None:
    fn = Script(a=[error])
    result, served = await _call(router, "guarded", fn)
    assert (result, served) == ("ok from b@1", "b@1")
    assert fn.calls == Counter({"a@1": 1, "b@1": 1})
    assert metrics._fallbacks == {("guarded", "a", "b", reason): 1}


async def test_fallback_on_route_timeout(router: Router, metrics: Metrics) -> None:
    async def hang() -> str:
        await asyncio.sleep(5)
        return "late"

    fn = Script(a=[hang])
    assert await _call(router, "slow", fn) == ("ok from b@1", "b@1")
    assert metrics._fallbacks == {("slow", "a", "b", "timeout"): 1}


@pytest.mark.parametrize("error", [
    InvalidRequest("bad input"), PermissionDenied("not yours"),
    RateLimited("your own limit", retry_after=30, limit=100),
])
async def test_no_fallback_on_the_callers_own_errors(router: Router, metrics: Metrics, error: Exception) -> None:
    fn = Script(a=[error])
    with pytest.raises(type(error)):
        await _call(router, "guarded", fn)
    assert fn.calls == Counter({"a@1": 1})
    assert metrics._fallbacks == {}


async def test_every_candidate_fails_raises_the_last_error(router: Router, metrics: Metrics) -> None:
    fn = Script(a=[UpstreamError("a down")], b=[UpstreamTimeout("b slow")], c=[UpstreamError("c down")])
    with pytest.raises(UpstreamError, match="c down"):
        await _call(router, "guarded", fn)
    assert fn.calls == Counter({"a@1": 1, "b@1": 1, "c@1": 1})
    assert metrics._fallbacks[("guarded", "c", "none", "error")] == 1


async def test_a_target_that_is_not_installed_falls_back(router: Router) -> None:
    fn = Script()
    assert await _call(router, "missing", fn) == ("ok from b@1", "b@1")
    # Called by its own name, the model that is not installed is still the caller's 404.
    with pytest.raises(ModelNotFound):
        await _call(router, "absent", fn)


async def test_candidates_skip_models_that_cannot_do_the_task(router: Router) -> None:
    assert [s.key for s in router.candidates(router.routes["mixed"], "chat", None)] == ["b@1"]
    assert await _call(router, "mixed", Script()) == ("ok from b@1", "b@1")


async def test_plain_model_name_has_no_fallback(router: Router) -> None:
    fn = Script(a=[UpstreamError("down")])
    with pytest.raises(UpstreamError):
        await _call(router, "a", fn)
    assert fn.calls == Counter({"a@1": 1})


# --- retries --------------------------------------------------------------------------------------


async def test_retries_with_backoff_then_success(router: Router, metrics: Metrics, sleeps: list[float]) -> None:
    fn = Script(a=[UpstreamError("blip"), UpstreamTimeout("blip"), "ok"])
    assert await _call(router, "retrying", fn, retry=True) == ("ok from a@1", "a@1")
    assert fn.calls == Counter({"a@1": 3})
    # Full jitter under 0.2 s, then under 0.4 s.
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.2 and 0 <= sleeps[1] <= 0.4
    assert metrics._retries == {("a", "error"): 1, ("a", "timeout"): 1}


async def test_retries_exhausted_then_fallback(router: Router, sleeps: list[float]) -> None:
    fn = Script(a=[UpstreamError("down")])
    assert await _call(router, "retrying", fn, retry=True) == ("ok from b@1", "b@1")
    assert fn.calls == Counter({"a@1": 3, "b@1": 1}) and len(sleeps) == 2


async def test_no_retries_for_calls_that_are_not_idempotent(router: Router, sleeps: list[float]) -> None:
    fn = Script(a=[UpstreamError("down")])
    assert await _call(router, "retrying", fn) == ("ok from b@1", "b@1")
    assert fn.calls == Counter({"a@1": 1, "b@1": 1}) and sleeps == []


async def test_retry_after_is_honoured_under_the_cap(router: Router, sleeps: list[float]) -> None:
    fn = Script(a=[UpstreamRateLimited("slow down", retry_after=1.5), "ok"])
    assert await _call(router, "retrying", fn, retry=True) == ("ok from a@1", "a@1")
    assert sleeps == [1.5]


async def test_long_retry_after_moves_on_instead_of_waiting(router: Router, sleeps: list[float]) -> None:
    fn = Script(a=[UpstreamRateLimited("come back in a minute", retry_after=60)])
    assert await _call(router, "retrying", fn, retry=True) == ("ok from b@1", "b@1")
    assert fn.calls["a@1"] == 1 and sleeps == []


async def test_no_retry_on_the_callers_error(router: Router, sleeps: list[float]) -> None:
    fn = Script(a=[InvalidRequest("bad")])
    with pytest.raises(InvalidRequest):
        await _call(router, "retrying", fn, retry=True)
    assert fn.calls["a@1"] == 1 and sleeps == []


# --- circuit breakers -------------------------------------------------------------------------------


async def test_breaker_opens_fails_fast_half_opens_and_closes(router: Router, clock: Clock) -> None:
    fn = Script(a=[UpstreamError("down")])
    for _ in range(3):
        with pytest.raises(UpstreamError):
            await _call(router, "a", fn)
    assert router.breaker_states() == [("a@1", "open")]
    # Open: fails fast, the model is not called, and the client is told when to come back.
    with pytest.raises(CircuitOpen) as raised:
        await _call(router, "a", fn)
    assert fn.calls["a@1"] == 3
    assert raised.value.status_code == 503 and raised.value.headers == {"Retry-After": "10"}
    # A route skips the open upstream at once.
    assert await _call(router, "guarded", fn) == ("ok from b@1", "b@1")
    assert fn.calls["a@1"] == 3
    # After the cool-down: half open, one trial call, which succeeds and closes the breaker.
    clock.now += 10
    assert router.breaker_states() == [("a@1", "half_open")]
    fn.outcomes["a@1"] = ["ok"]
    assert await _call(router, "a", fn) == ("ok from a@1", "a@1")
    assert router.breaker_states() == [("a@1", "closed")]
    assert await _call(router, "a", fn) == ("ok from a@1", "a@1")


async def test_half_open_lets_one_trial_through_and_a_failed_trial_reopens(router: Router, clock: Clock) -> None:
    fn = Script(a=[UpstreamError("down")])
    for _ in range(3):
        with pytest.raises(UpstreamError):
            await _call(router, "a", fn)
    clock.now += 10
    release = asyncio.Event()

    async def slow_failure() -> str:
        await release.wait()
        raise UpstreamError("still down")

    fn.outcomes["a@1"] = [slow_failure]
    trial = asyncio.create_task(_call(router, "a", fn))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpen):  # a second caller while the trial runs
        await _call(router, "a", fn)
    release.set()
    with pytest.raises(UpstreamError):
        await trial
    assert router.breakers["a@1"].current_state() == "open"
    with pytest.raises(CircuitOpen):
        await _call(router, "a", fn)


async def test_a_cancelled_trial_frees_the_slot(router: Router, clock: Clock) -> None:
    fn = Script(a=[UpstreamError("down")])
    for _ in range(3):
        with pytest.raises(UpstreamError):
            await _call(router, "a", fn)
    clock.now += 10

    async def hang() -> str:
        await asyncio.sleep(5)
        return "never"

    fn.outcomes["a@1"] = [hang]
    trial = asyncio.create_task(_call(router, "a", fn))
    await asyncio.sleep(0)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    fn.outcomes["a@1"] = ["ok"]
    assert await _call(router, "a", fn) == ("ok from a@1", "a@1")


async def test_rate_limits_and_caller_errors_do_not_open_the_breaker(router: Router) -> None:
    fn = Script(a=[UpstreamRateLimited("429"), ModelOverloaded("full", retry_after=1.0), InvalidRequest("bad")])
    for _ in range(6):
        with pytest.raises(KasetError):
            await _call(router, "a", fn)
    assert all(state == "closed" for _, state in router.breaker_states())


async def test_a_success_resets_the_consecutive_count(router: Router) -> None:
    fn = Script(a=[UpstreamError("1"), UpstreamError("2"), "ok", UpstreamError("3"), UpstreamError("4"), "ok"])
    for _ in range(6):
        with contextlib.suppress(UpstreamError):
            await _call(router, "a", fn)
    assert router.breaker_states() == [("a@1", "closed")]


async def test_open_breakers_everywhere_give_503_with_retry_after(router: Router, metrics: Metrics) -> None:
    fn = Script(a=[UpstreamError("down")], b=[UpstreamError("down")], c=[UpstreamError("down")])
    for name in ("a", "b", "c"):
        for _ in range(3):
            with pytest.raises(UpstreamError):
                await _call(router, name, fn)
    with pytest.raises(CircuitOpen) as raised:
        await _call(router, "guarded", fn)
    assert "Retry-After" in raised.value.headers
    assert metrics._fallbacks[("guarded", "c", "none", "circuit_open")] == 1


def test_breaker_off_with_zero_failures(catalog: Catalog, tmp_path: Path) -> None:
    router = Router(ModelManager(catalog, ModelRepository(tmp_path)), breaker_failures=0)

    async def run() -> None:
        fn = Script(a=[UpstreamError("down")])
        for _ in range(10):
            with pytest.raises(UpstreamError):
                await _call(router, "a", fn)
        assert router.breakers == {} and fn.calls["a@1"] == 10

    asyncio.run(run())


def test_breaker_unit() -> None:
    clock = Clock()
    breaker = Breaker("u", threshold=2, cooldown_s=5, clock=clock)
    assert breaker.admit()
    breaker.failed()
    assert breaker.current_state() == "closed" and breaker.admit()
    breaker.failed()
    assert breaker.current_state() == "open" and not breaker.admit() and breaker.retry_after() == 5
    clock.now += 5
    assert breaker.admit() and not breaker.admit()  # one trial only
    breaker.released()
    assert breaker.admit()
    breaker.succeeded()
    assert breaker.current_state() == "closed"


def test_upstream_is_the_provider_base_url(catalog: Catalog) -> None:
    x, y = catalog.resolve("gpt-x"), catalog.resolve("gpt-y")
    assert upstream_of(x) == upstream_of(y) == "https://llm.example:8443/v1"  # no credentials in a label
    assert upstream_of(catalog.resolve("a@2")) == "a@2"


def test_fallback_reasons() -> None:
    assert fallback_reason(UpstreamError("x")) == "error"
    assert fallback_reason(CircuitOpen("x", retry_after=1)) == "circuit_open"
    assert fallback_reason(ModelNotFound("x")) is None
    assert fallback_reason(asyncio.CancelledError()) is None
    # The label follows the class, whatever status or code an instance was given.
    assert fallback_reason(InvalidRequest("x", code="upstream_invalid_request")) is None
    assert fallback_reason(UpstreamError("x", code="upstream_unreachable")) == "error"
    assert fallback_reason(ModelUnavailable("x")) == "unavailable"
    assert fallback_reason(Overloaded("x", code="queue_unreachable")) == "overloaded"


async def test_an_unavailable_model_is_not_retried_but_falls_back(router: Router, sleeps: list[float]) -> None:
    fn = Script(a=[ModelUnavailable("failed to load")])
    assert await _call(router, "retrying", fn, retry=True) == ("ok from b@1", "b@1")
    assert fn.calls["a@1"] == 1 and sleeps == []


# --- the catalog ------------------------------------------------------------------------------------


def test_routes_load_from_catalog_files(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text("""
routes:
  - name: chat-canary
    targets:
      - {model: echo, weight: 90}
      - {model: gpt-4o-mini, weight: 10}
    fallbacks: [echo]
    retries: 2
""")
    catalog = Catalog.load([tmp_path])
    route = catalog.routes["chat-canary"]
    assert [(t.model, t.weight) for t in route.targets] == [("echo", 90), ("gpt-4o-mini", 10)]
    assert route.fallbacks == ["echo"] and route.retries == 2 and route.sticky


@pytest.mark.parametrize("yaml_text,message", [
    ("routes: [{name: r, targets: [{model: no-such-model}]}]", "not a model"),
    ("routes: [{name: r, targets: [{model: echo, weight: 0}]}]", "weight above 0"),
    ("routes: [{name: r, targets: []}]", "at least 1"),
    ("routes: [{name: r, targets: [{model: echo}]}, {name: r, targets: [{model: echo}]}]", "twice"),
])
def test_bad_routes_are_refused(tmp_path: Path, yaml_text: str, message: str) -> None:
    (tmp_path / "routes.yaml").write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        Catalog.load([tmp_path])
