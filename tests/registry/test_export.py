"""Install-time export from PyTorch to ONNX: the export venv, the checks, the model card.

The models are exported once per machine through the `installed` fixture (the export venv is
cached beside the test models, in var/test/export-env); the failure tests reuse that venv.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from kaset.errors import ChecksumMismatch
from kaset.registry.catalog import Catalog, ExportSpec, ModelSpec
from kaset.registry.export import PROB_TOLERANCE, REPORT_NAME, ExportFailed
from kaset.registry.repository import CARD_NAME, ModelRepository

Installed = Callable[[str], tuple[ModelSpec, Path]]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("model_id", ["efficientnet-lite0", "mango-disease"])
def test_card_records_the_torch_check(installed: Installed, repository: ModelRepository, model_id: str) -> None:
    spec, folder = installed(model_id)
    assert spec.export is not None
    assert repository.is_installed(spec)
    card = repository.card(spec)
    assert card is not None
    export = card["export"]
    check = export["check"]
    assert check["passed"] and check["tolerance"] == PROB_TOLERANCE
    assert check["max_abs_diff"] <= PROB_TOLERANCE
    agreed, total = check["top1_agreement"].split("/")
    assert agreed == total and int(total) >= 8  # 4 photos + 2 noise images + 4 random tensors
    assert {r["input"] for r in check["per_input"]} >= {"chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"}
    # The pinned source weights were verified; the exported files are recorded as they are.
    assert [(i["name"], i["sha256"]) for i in export["inputs"]] == [(i.name, i.sha256) for i in spec.export.inputs]
    for output in export["outputs"]:
        assert sha256(folder / output["name"]) == output["sha256"]
    assert export["versions"]["torch"].startswith("2.13.0")
    assert json.loads((folder / REPORT_NAME).read_text()) == export
    assert not (folder / "reference.npz").exists()
    assert repository.verify(spec) == []


def test_verify_notices_a_changed_onnx_file(installed: Installed, tmp_path: Path) -> None:
    spec, folder = installed("mango-disease")
    copy = ModelRepository(tmp_path / "models")
    target = copy.path_for(spec)
    target.mkdir(parents=True)
    for name in ("model.onnx", "labels.json", CARD_NAME):
        (target / name).write_bytes((folder / name).read_bytes())
    assert copy.is_installed(spec) and copy.verify(spec) == []
    (target / "labels.json").write_text('["tampered"]')
    assert copy.verify(spec) == ["labels.json"]


def test_torch_stays_out_of_the_serving_environment(installed: Installed, repository: ModelRepository) -> None:
    installed("efficientnet-lite0")
    assert importlib.util.find_spec("torch") is None
    assert (repository.export_env / "bin" / "python").exists()


def _variant(spec: ModelSpec, **export_changes: object) -> ModelSpec:
    assert spec.export is not None
    return spec.model_copy(update={"id": f"{spec.id}-variant", "export": spec.export.model_copy(update=export_changes)})


def test_wrong_source_checksum_refuses_the_model(installed: Installed, repository: ModelRepository,
                                                 tmp_path: Path) -> None:
    spec, _ = installed("mango-disease")
    assert spec.export is not None
    bad_input = spec.export.inputs[0].model_copy(update={"sha256": "0" * 64})
    bad = _variant(spec, inputs=[bad_input])
    repo = ModelRepository(tmp_path / "models", export_env=repository.export_env)
    with pytest.raises(ChecksumMismatch, match=r"AA-ENet_proposed\.pt"):
        repo.install(bad)
    assert not repo.is_installed(bad)
    assert all(p.is_dir() for p in (tmp_path / "models").rglob("*"))


def test_preprocessing_that_differs_from_torch_refuses_the_model(
        installed: Installed, repository: ModelRepository, tmp_path: Path) -> None:
    """Catalog params that do not match the torch reference (here: mean/std 0.5 where the package
    normalises with ImageNet's) are caught by the end-to-end check, not shipped."""
    spec, _ = installed("mango-disease")
    wrong = _variant(spec).model_copy(update={"params": {**spec.params, "mean": [0.5] * 3, "std": [0.5] * 3}})
    repo = ModelRepository(tmp_path / "models", export_env=repository.export_env)
    with pytest.raises(ExportFailed, match="differs from torch"):
        repo.install(wrong)
    assert not repo.is_installed(wrong)


def test_export_section_needs_a_package_or_path_source() -> None:
    export = ExportSpec(exporter="efficientnet_lite:export", outputs=["model.onnx"],
                        inputs=[{"name": "weights", "sha256": "0" * 64}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="package or path source"):
        ModelSpec(id="x", tasks=["classify"], runtime="onnx-vision", license="MIT",
                  source={"kind": "hub", "repo": "a/b"}, export=export)  # type: ignore[arg-type]


def test_export_entries_are_in_the_catalog(catalog: Catalog) -> None:
    for model_id in ("efficientnet-lite0", "mango-disease"):
        spec = catalog.resolve(model_id)
        assert spec.export is not None and spec.needs_install and spec.runtime == "onnx-vision"
        assert all(len(i.sha256) == 64 for i in spec.export.inputs)
