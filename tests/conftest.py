"""Shared fixtures: the real catalog and a model repository with the real models installed.

Models are installed once into var/test/models (kept between runs, like a user's model
repository) so the suite pays the copy and hash only the first time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from kaset.registry.catalog import Catalog, ModelSpec
from kaset.registry.repository import ModelRepository

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture(scope="session")
def models_dir() -> Path:
    path = Path(os.environ.get("KASET_TEST_MODELS_DIR", ROOT / "var" / "test" / "models"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def repository(models_dir: Path) -> ModelRepository:
    return ModelRepository(models_dir)


@pytest.fixture(scope="session")
def installed(catalog: Catalog, repository: ModelRepository) -> Callable[[str], tuple[ModelSpec, Path]]:
    """installed("whisper-tiny.en") -> (spec, folder), installing the model on first use."""

    def install(model_id: str) -> tuple[ModelSpec, Path]:
        spec = catalog.resolve(model_id)
        return spec, repository.install(spec)

    return install
