"""kaset.metrics collectors that other modules register on the app's registry."""

from __future__ import annotations

from prometheus_client import generate_latest

from kaset.metrics import Metrics, VoiceSessions


def test_voice_sessions_gauge_reads_the_open_count_at_scrape_time() -> None:
    metrics = Metrics()
    assert b"kaset_voice_sessions" not in generate_latest(metrics.registry)  # until voice is used
    sessions = VoiceSessions()
    metrics.registry.register(sessions)
    sessions.open += 2
    assert b"kaset_voice_sessions 2.0" in generate_latest(metrics.registry)
    sessions.open -= 2
    assert b"kaset_voice_sessions 0.0" in generate_latest(metrics.registry)
