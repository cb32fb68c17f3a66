"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kaset.knowledge.schema import load_entries
from kaset.pipelines.diagnose import DiagnosisService
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository


@pytest.fixture(scope="module")
async def diagnoser(catalog: Catalog, installed: Callable[[str], object],
                    models_dir: Path) -> AsyncIterator[DiagnosisService]:
    """Crop Guardian's diagnosis with the real ImageNet and mango models (seeded A/B choice)."""
    installed("efficientnet-lite0")
    installed("mango-disease")
    manager = ModelManager(catalog, ModelRepository(models_dir))
    yield DiagnosisService(manager, load_entries(), rng=random.Random(1))
    await manager.close()
