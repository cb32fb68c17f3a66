"""The Dockerfile, parsed line by line.

No Docker engine exists on these machines, so the image is not built here: these checks hold
the file to its shape (multi-stage, non-root, health check, port, entrypoint).
"""

from __future__ import annotations

import re

from tests.deploy.conftest import ROOT, Instruction, exec_form, parse_dockerfile


def _all(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


def test_parser_joins_continuations_and_drops_comments() -> None:
    parsed = parse_dockerfile("# c\nFROM a AS b\nRUN x \\\n  # inner\n    && y\n\nCMD [\"z\"]\n")
    assert [(i.keyword, i.value) for i in parsed] == [("FROM", "a AS b"), ("RUN", "x && y"), ("CMD", '["z"]')]


def test_multi_stage_with_slim_bookworm_runtime(dockerfile: list[Instruction]) -> None:
    froms = _all(dockerfile, "FROM")
    assert len(froms) >= 2
    stages = [f.value.split() for f in froms]
    names = [s[2].lower() for s in stages if len(s) == 3 and s[1].upper() == "AS"]
    assert "builder" in names
    args = {a.value.split("=", 1)[0]: a.value.split("=", 1)[1] for a in _all(dockerfile, "ARG") if "=" in a.value}
    runtime_image = stages[-1][0]
    runtime_image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], runtime_image)
    assert runtime_image == "python:3.11-slim-bookworm"
    # The runtime stage copies the wheelhouse from the builder, and no build tools are installed in it.
    last_from = froms[-1].line
    runtime = [i for i in dockerfile if i.line > last_from]
    assert any(i.keyword == "COPY" and "--from=builder" in i.value for i in runtime)
    runtime_installs = " ".join(i.value for i in runtime if i.keyword == "RUN" and "apt-get install" in i.value)
    for tool in ("build-essential", "cmake", "gcc"):
        assert tool not in runtime_installs
    for package in ("espeak-ng", "apertium", "libgomp1"):
        assert package in runtime_installs
    builder = [i for i in dockerfile if froms[0].line <= i.line < froms[1].line]
    assert any(i.keyword == "RUN" and "pip wheel" in i.value and "models" in i.value for i in builder)


def test_runtime_apt_packages_cover_the_catalog(dockerfile: list[Instruction]) -> None:
    """Every Debian package a `system` model of the default pack needs is in the runtime stage."""
    from kaset.registry.catalog import Catalog

    last_from = _all(dockerfile, "FROM")[-1].line
    installs = " ".join(i.value for i in dockerfile if i.line > last_from and i.keyword == "RUN")
    words = set(installs.split())
    for spec in Catalog.load():
        if spec.default and spec.source.kind == "system":
            for package in spec.source.debian_packages:
                assert package in words, f"{spec.id} needs {package}"


def test_runs_as_a_non_root_user(dockerfile: list[Instruction]) -> None:
    users = _all(dockerfile, "USER")
    assert users
    final = users[-1].value.split(":")[0]
    assert final not in {"root", "0"}
    assert users[-1].line > _all(dockerfile, "FROM")[-1].line
    assert any(i.keyword == "RUN" and "useradd" in i.value and final in i.value for i in dockerfile)


def test_healthcheck_expose_entrypoint_cmd(dockerfile: list[Instruction]) -> None:
    healthchecks = _all(dockerfile, "HEALTHCHECK")
    assert len(healthchecks) == 1
    check = healthchecks[0].value
    match = re.search(r"http://[\w.]+:(\d+)(/[\w/]*)", check)
    assert match, check
    exposed = {int(p.split("/")[0]) for e in _all(dockerfile, "EXPOSE") for p in e.value.split()}
    assert exposed == {int(match.group(1))}
    assert match.group(2) == "/health/live"
    assert exec_form(_all(dockerfile, "ENTRYPOINT")[-1].value) == ["kaset"]
    cmd = exec_form(_all(dockerfile, "CMD")[-1].value)
    assert cmd[:3] == ["serve", "--host", "0.0.0.0"]
    assert int(cmd[cmd.index("--port") + 1]) in exposed


def test_data_volume_and_model_install(dockerfile: list[Instruction]) -> None:
    env = " ".join(i.value for i in _all(dockerfile, "ENV"))
    assert "KASET_DATA_DIR=/data" in env
    volumes = " ".join(i.value for i in _all(dockerfile, "VOLUME"))
    assert "/data" in volumes
    args = [i.value.split("=")[0] for i in _all(dockerfile, "ARG")]
    assert "INSTALL_MODELS" in args
    assert any(i.keyword == "RUN" and "kaset models install --default" in i.value and "INSTALL_MODELS" in i.value
               for i in dockerfile)


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "var"} <= ignored
    # What the build needs must not be ignored.
    assert not {"src", "pyproject.toml", "README.md", "LICENSE"} & ignored
