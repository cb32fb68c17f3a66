"""An in-process gateway (real models, real auth) shared by the API tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kaset.app import create_app
from kaset.config import Settings
from kaset.registry.catalog import Catalog


@pytest.fixture(scope="session")
def api_settings(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog,
                 installed: Callable[[str], object], models_dir: Path) -> Settings:
    for spec in catalog:
        if spec.default and spec.needs_install:
            installed(spec.id)
    return Settings(data_dir=tmp_path_factory.mktemp("api-data"), models_dir=models_dir,
                    max_upload_bytes=2 * 1024 * 1024, max_audio_seconds=60, max_speech_chars=500)


@pytest.fixture(scope="session")
def client(api_settings: Settings) -> Iterator[TestClient]:
    announced: list[str] = []
    app = create_app(api_settings, announce_key=announced.append)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        assert len(announced) == 1, "the first start must create and announce one admin key"
        test_client.headers["Authorization"] = f"Bearer {announced[0]}"
        deadline = time.monotonic() + 120
        while test_client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, test_client.get("/health/ready").text
            time.sleep(0.2)
        yield test_client
