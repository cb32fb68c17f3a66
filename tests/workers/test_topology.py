"""`kaset up FILE`: the gateway and its workers as child processes, stopped cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from kaset.workers.topology import Topology
from tests.fixtures.tcp_proxy import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_example_topology_parses() -> None:
    topology = Topology.load(ROOT / "deploy" / "topology.example.yaml")
    names = [s.name for s in topology.services]
    assert names == ["speech", "text-1", "text-2", "gateway"]
    gateway = topology.services[-1]
    assert gateway.env["KASET_WORKER_URLS"] == "http://127.0.0.1:8101,http://127.0.0.1:8111,http://127.0.0.1:8112"
    assert gateway.env["KASET_MODELS"] == "[]"
    assert topology.services[1].args[:3] == ["worker", "--models", "echo,e5-small"]


def test_bad_topology_is_refused() -> None:
    with pytest.raises(ValueError, match="models"):
        Topology.parse({"workers": [{"port": 1}]})


def test_up_starts_and_stops_a_topology(tmp_path: Path, models_dir: Path) -> None:
    gw_port, w_port = free_port(), free_port()
    spec = {"env": {"KASET_MODELS_DIR": str(models_dir), "KASET_DATA_DIR": str(tmp_path / "data"),
                    "KASET_AUTH_ENABLED": "false", "KASET_REQUEST_LOG": "false",
                    "KASET_WORKER_POLL_INTERVAL_S": "0.2"},
            "log_dir": "logs", "stop_timeout_s": 15,
            "gateway": {"port": gw_port}, "workers": [{"name": "text", "models": ["echo"], "port": w_port}]}
    file = tmp_path / "topology.yaml"
    file.write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen([sys.executable, "-m", "kaset", "up", str(file)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        gateway = f"http://127.0.0.1:{gw_port}"
        deadline = time.monotonic() + 60
        answer = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                answer = httpx.post(f"{gateway}/v1/embeddings", json={"model": "echo", "input": "x"}, timeout=2)
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert answer is not None and answer.status_code == 200
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        for port in (gw_port, w_port):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_up_stops_everything_when_a_child_fails(tmp_path: Path, models_dir: Path) -> None:
    w_port, bad_port = free_port(), free_port()
    spec = {"env": {"KASET_MODELS_DIR": str(models_dir), "KASET_DATA_DIR": str(tmp_path / "data")},
            "log_dir": "logs", "stop_timeout_s": 15,
            "workers": [{"name": "good", "models": ["echo"], "port": w_port},
                        {"name": "bad", "models": ["no-such-model"], "port": bad_port}]}
    file = tmp_path / "topology.yaml"
    file.write_text(yaml.safe_dump(spec))
    result = subprocess.run([sys.executable, "-m", "kaset", "up", str(file)], cwd=tmp_path, capture_output=True,
                            timeout=60)
    assert result.returncode == 1
    assert b"bad exited" in result.stdout
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{w_port}/health/live", timeout=1)
