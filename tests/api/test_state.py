"""What each process puts on app.state (kaset.api.deps.provide_state), checked at start-up.

The gateway provides every service; a model worker only the model side (no identity, limits
or database), and a route that needs more stops the worker's start with an error naming it.
Settings cannot be changed once a process serves.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from kaset.api.deps import IdentityDep, QuotasDep
from kaset.app import create_app
from kaset.config import Settings
from kaset.workers.app import create_worker_app


def test_the_gateway_serves_a_frozen_copy_of_its_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, models=[], warmup=False)
    with TestClient(create_app(settings, announce_key=lambda key: None)) as client:
        served: Settings = client.app.state.settings  # type: ignore[attr-defined]
        assert served.models == [] and served.data_dir == tmp_path
        with pytest.raises(ValidationError, match="frozen"):
            served.max_text_chars = 1
        assert client.get("/health/ready").json() == {"status": "ready", "models": {}}


def test_a_worker_provides_no_identity_quotas_or_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, lazy_load=True)
    with TestClient(create_worker_app(settings, [])) as client:
        state = client.app.state  # type: ignore[attr-defined]
        for name in ("identity", "quotas", "db", "advisor", "diagnoser"):
            assert not hasattr(state, name), name
        assert state.settings.lazy_load is False and state.settings.models == []
        assert settings.lazy_load is True and settings.models is None  # the caller's settings are untouched
        assert client.get("/health/ready").status_code == 200
        assert client.post("/warmup").json() == {"warmed": {}}


def test_a_worker_route_that_needs_identity_fails_the_start(tmp_path: Path) -> None:
    app = create_worker_app(Settings(data_dir=tmp_path), [])

    @app.get("/whoami")
    async def whoami(identity: IdentityDep, quotas: QuotasDep) -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match=r"/whoami: app\.state\.identity.*/whoami: app\.state\.quotas"), \
            TestClient(app):
        pass
