"""Parsed deployment files (deploy/, Dockerfile) for the tests in this folder.

There is no Docker engine and no Kubernetes cluster on the machines Kaset is built on: no image
is built and nothing is started here. These tests keep the files correct by parsing them and
checking every service, port, env var, probe and command they name against the code.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = DEPLOY / "grafana" / "kaset-dashboard.json"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    value: str    # the rest, continuation lines joined
    line: int     # 1-based line of the instruction's start


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments and blank lines dropped, `\\` continuations joined."""
    out: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        joined = " ".join(part for part in buffer if part)
        keyword, _, value = joined.partition(" ")
        out.append(Instruction(keyword.upper(), value.strip(), start))
        buffer = []
    assert not buffer, "the Dockerfile ends inside a continued instruction"
    return out


def exec_form(value: str) -> list[str]:
    """The argument list of a JSON (exec form) or shell form instruction value."""
    value = value.strip()
    if value.startswith("["):
        return list(yaml.safe_load(value))
    return shlex.split(value)


@pytest.fixture(scope="session")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs: list[tuple[Path, dict[str, Any]]] = []
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path, doc))
    return docs


@pytest.fixture(scope="session")
def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return k8s_documents()


def is_kaset_image(image: str | None) -> bool:
    return bool(image) and re.match(r"^([\w.-]+(:\d+)?/)*kaset(:[\w.-]+)?$", str(image)) is not None


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return doc["spec"]["template"]["spec"]
    return None
