"""The real `kaset serve` process on a free port, shared by the end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from kaset.registry.catalog import Catalog

KEY = "ksk-e2e-test-key-0123456789abcdef0123456789"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog,
           installed: Callable[[str], object], models_dir: Path) -> Iterator[str]:
    for spec in catalog:
        if spec.default and spec.needs_install:
            installed(spec.id)
    port = _free_port()
    data_dir = tmp_path_factory.mktemp("e2e-data")
    env = {**os.environ, "KASET_DATA_DIR": str(data_dir), "KASET_MODELS_DIR": str(models_dir),
           "KASET_BOOTSTRAP_KEY": KEY}
    log_path = data_dir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kaset", "serve", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    pytest.fail(f"server exited early:\n{log_path.read_text()}")
                try:
                    if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
            else:
                pytest.fail(f"server not ready in 120 s:\n{log_path.read_text()}")
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


