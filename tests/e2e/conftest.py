"""The real `kaset serve` process on a free port, shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kaset.registry.catalog import Catalog
from tests.fixtures.gateway_process import gateway_process

KEY = "ksk-e2e-test-key-0123456789abcdef0123456789"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog,
           installed: Callable[[str], object], models_dir: Path) -> Iterator[str]:
    for spec in catalog:
        if spec.default and spec.needs_install:
            installed(spec.id)
    data_dir = tmp_path_factory.mktemp("e2e-data")
    with gateway_process(data_dir, {"KASET_MODELS_DIR": str(models_dir), "KASET_BOOTSTRAP_KEY": KEY}) as base:
        yield base
