"""`kaset crop calibrate` on a folder built from real photos (other/) and drawn mango-like leaves
(labelled by what was drawn: spotless → Healthy, spotted → Anthracnose), with the real models.

The drawn leaves are not real mango leaves, so the figures say nothing about accuracy on real
photos; these tests check the mechanism: the folder is read, every photo runs through the real
gate and models, the rates per threshold add up, and the written config meets the target.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from kaset.cli import app
from kaset.pipelines.calibrate import CalibrationError, Observation, choose, labelled_photos, sweep
from kaset.pipelines.diagnose import CropGuardianConfig
from tests.fixtures.images import jpeg, mango_like_leaf, not_mango_photos

runner = CliRunner()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    for label in ("Healthy", "Anthracnose", "other"):
        (root / label).mkdir()
    for seed in range(6):
        Image.fromarray(mango_like_leaf(seed=seed, spots=0)).save(root / "Healthy" / f"leaf{seed}.png")
        (root / "Anthracnose" / f"leaf{seed}.jpg").write_bytes(jpeg(mango_like_leaf(seed=seed, spots=20 + seed)))
    for index, (name, photo) in enumerate(not_mango_photos()):
        if index % 3 == 0:
            (root / "other" / f"{name.replace('/', '-')}.jpg").write_bytes(jpeg(photo))
    (root / "other" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    return root


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models_dir: Path,
            installed: Callable[[str], object]) -> Path:
    installed("efficientnet-lite0")
    installed("mango-disease")
    installed("mango-disease@2")
    monkeypatch.setenv("KASET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KASET_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("KASET_CROP_GUARDIAN_CONFIG", raising=False)
    return tmp_path


def test_calibrate_prints_the_tables_and_writes_thresholds(cli_env: Path, photo_folder: Path) -> None:
    output = cli_env / "calibrated.yaml"
    result = runner.invoke(app, ["crop", "calibrate", str(photo_folder), "--output", str(output),
                                 "--false-accept", "0.0"])
    assert result.exit_code == 0, result.output
    for heading in ("Outcomes at unsure_below", "Per confidence threshold", "Which gate signal decided"):
        assert heading in result.output
    assert "broken.jpg" in result.output  # skipped with its reason, not fatal
    calibrated = CropGuardianConfig.load(output)
    mango = calibrated.crops["mango"]
    assert 0.5 <= mango.unsure_below <= mango.confident_above <= 1  # never below the --floor
    assert "rule of three" not in result.output and "holds on these" in result.output
    assert output.read_text().startswith("# Calibrated by `kaset crop calibrate`")
    assert "false accept 0.0%" in output.read_text()


def test_calibrate_fits_the_leaf_outline(cli_env: Path, photo_folder: Path) -> None:
    output = cli_env / "fitted.yaml"
    result = runner.invoke(app, ["crop", "calibrate", str(photo_folder), "--output", str(output), "--fit-leaf"])
    assert result.exit_code == 0, result.output
    leaf = yaml.safe_load(output.read_text())["crops"]["mango"]["leaf"]
    low, high = leaf["elongation"]
    assert low < 3.9 < 4.2 < high  # the drawn leaves are about 4 times as long as wide


def test_a_folder_without_other_photos_is_refused(tmp_path: Path) -> None:
    (tmp_path / "Healthy").mkdir()
    Image.fromarray(mango_like_leaf(seed=0, spots=0)).save(tmp_path / "Healthy" / "a.png")
    with pytest.raises(CalibrationError, match="other"):
        labelled_photos(tmp_path, ["Healthy"])
    (tmp_path / "Rust").mkdir()
    with pytest.raises(CalibrationError, match="Rust"):
        labelled_photos(tmp_path, ["Healthy"])


def _seen(truth: str, label: str | None, confidence: float | None, status: str = "diagnosed") -> Observation:
    return Observation(Path("x"), truth, status, None, label, confidence)


def test_the_sweep_meets_the_false_accept_target() -> None:
    observations = [_seen("Healthy", "Healthy", 0.9), _seen("Healthy", "Healthy", 0.7), _seen("Scab", "Healthy", 0.65),
                    _seen("Scab", "Scab", 0.95), _seen("other", "Scab", 0.8), _seen("other", "Healthy", 0.6),
                    _seen("other", None, None, "not_a_plant"), _seen("other", None, None, "not_this_crop")]
    rows = sweep(observations)
    unsure_below, confident_above = choose(rows, false_accept=0.0, confident_error=0.0)
    assert unsure_below is not None and 0.8 < unsure_below <= 0.9  # above the best 'other' confidence
    assert confident_above == unsure_below  # both left are right
    at = next(r for r in rows if r.threshold == unsure_below)
    assert at.false_accept == 0 and at.false_reject == 0.5 and at.error == 0
    loose, _ = choose(rows, false_accept=0.25, confident_error=0.5)
    assert loose is not None and 0.6 < loose <= 0.8
    assert choose(rows, false_accept=1.0, confident_error=1.0, floor=0.7)[0] == 0.7
    # Nothing diagnosed at all: the CLI refuses to write such a config.
    assert choose(rows, false_accept=0.0, confident_error=0.0, floor=1.0)[0] == 1.0
