"""`kaset up FILE`: a local topology (a gateway and its workers) as child processes.

For development and benchmarks on one machine. The file (deploy/topology.example.yaml):

    host: 127.0.0.1            # optional
    env: {KASET_WORKER_TOKEN: change-me}     # added to every process
    gateway: {port: 8000, env: {...}}
    workers:
      - {name: text, models: [echo, e5-small], port: 8101, replicas: 2, env: {...}}

Replica i of a worker listens on port + i. The gateway gets KASET_WORKER_URLS listing every
worker and KASET_MODELS=[] (it loads nothing itself) unless its env says otherwise. Ctrl-C or
SIGTERM stops everything: SIGTERM to each child (workers drain), SIGKILL after `stop_timeout_s`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


@dataclass
class Service:
    name: str
    args: list[str]
    port: int
    env: dict[str, str]
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class Topology:
    services: list[Service] = field(default_factory=list)
    stop_timeout_s: float = 35.0
    log_dir: Path | None = None

    @classmethod
    def load(cls, path: Path) -> Topology:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping with 'gateway' and 'workers'")
        return cls.parse(data, path.parent)

    @classmethod
    def parse(cls, data: dict[str, Any], base: Path = Path()) -> Topology:
        host = str(data.get("host", "127.0.0.1"))
        common = {str(k): str(v) for k, v in (data.get("env") or {}).items()}
        services: list[Service] = []
        worker_urls: list[str] = []
        for index, worker in enumerate(data.get("workers") or []):
            if not isinstance(worker, dict) or not worker.get("models") or not worker.get("port"):
                raise ValueError(f"workers[{index}]: needs 'models' (a list) and 'port'")
            models = worker["models"]
            models_arg = ",".join(models) if isinstance(models, list) else str(models)
            name = str(worker.get("name") or f"worker{index}")
            replicas = int(worker.get("replicas", 1))
            env = {**common, **{str(k): str(v) for k, v in (worker.get("env") or {}).items()}}
            for replica in range(replicas):
                port = int(worker["port"]) + replica
                label = name if replicas == 1 else f"{name}-{replica + 1}"
                services.append(Service(label, ["worker", "--models", models_arg, "--port", str(port), "--host", host],
                                        port, env, host))
                worker_urls.append(f"http://{host}:{port}")
        gateway = data.get("gateway")
        if gateway is not None:
            if not isinstance(gateway, dict) or not gateway.get("port"):
                raise ValueError("gateway: needs 'port'")
            env = {**common, "KASET_MODELS": "[]"}
            if env.get("KASET_WORKER_REGISTRY") != "redis":
                env["KASET_WORKER_URLS"] = ",".join(worker_urls)
            env.update({str(k): str(v) for k, v in (gateway.get("env") or {}).items()})
            port = int(gateway["port"])
            services.append(Service("gateway", ["serve", "--port", str(port), "--host", host], port, env, host))
        if not services:
            raise ValueError("the topology names no gateway and no worker")
        log_dir = data.get("log_dir")
        return cls(services, float(data.get("stop_timeout_s", 35.0)), base / log_dir if log_dir else None)

    def start(self) -> None:
        for service in self.services:
            out: Any = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                out = (self.log_dir / f"{service.name}.log").open("ab")
            service.proc = subprocess.Popen([sys.executable, "-m", "kaset", *service.args],
                                            env={**os.environ, **service.env}, stdout=out, stderr=subprocess.STDOUT
                                            if out is not None else None)

    def stop(self) -> None:
        running = [s.proc for s in self.services if s.proc is not None and s.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def exited(self) -> Service | None:
        return next((s for s in self.services if s.proc is not None and s.proc.poll() is not None), None)


class _Stop(Exception):
    pass


def _raise_stop(sig: int, frame: FrameType | None) -> None:
    raise _Stop


def _is_ready(client: httpx.Client, service: Service) -> bool:
    try:
        return client.get(f"{service.url}/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def run_topology(topology: Topology, console: Console, *, ready_timeout_s: float = 300) -> int:
    """Start, wait for readiness (with a progress display), run until Ctrl-C/SIGTERM or a child
    exits, then stop everything. Returns the exit code."""
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    code = 0
    try:
        topology.start()
        with httpx.Client() as client, Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                                TimeElapsedColumn(), console=console) as progress:
            tasks = {s.name: progress.add_task(f"{s.name} on {s.url}: starting", total=1) for s in topology.services}
            pending = list(topology.services)
            deadline = time.monotonic() + ready_timeout_s
            while pending:
                dead = topology.exited()
                if dead is not None:
                    console.print(f"[red]{dead.name} exited (code {dead.proc.returncode if dead.proc else '?'})[/]")
                    return 1
                if time.monotonic() > deadline:
                    console.print(f"[red]not ready after {ready_timeout_s:g} s: "
                                  f"{', '.join(s.name for s in pending)}[/]")
                    return 1
                for service in list(pending):
                    if _is_ready(client, service):
                        progress.update(tasks[service.name], completed=1,
                                        description=f"[green]{service.name} on {service.url}: ready")
                        pending.remove(service)
                time.sleep(0.3)
        console.print("[bold green]All ready.[/] Ctrl-C stops them.")
        while True:
            dead = topology.exited()
            if dead is not None:
                console.print(f"[red]{dead.name} exited (code {dead.proc.returncode if dead.proc else '?'}); "
                              "stopping the rest[/]")
                return 1
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        console.print("stopping...")
        return code
    finally:
        signal.signal(signal.SIGTERM, previous)
        topology.stop()
