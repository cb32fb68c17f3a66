"""Export a model from PyTorch weights to ONNX once, at install time, outside the server's venv.

torch (and torchvision, timm, the model's own package) would turn the serving environment into
a multi-GB install and break other libraries there, so they live in a separate venv, the
*export environment* (`<data_dir>/export-env`), created on the first install that needs it and
reused afterwards. For a catalog entry with an `export:` section, `export_model`:

1. makes sure the export venv exists and has torch (`BASE_REQUIREMENTS`) plus the entry's
   `requirements` (a stamp file remembers what was installed, so later installs skip pip);
2. runs `exporters/_runner.py` there: it checks every source file against its pinned sha256,
   then the family's exporter writes `model.onnx`, `labels.json` and `reference.npz` (torch's
   outputs on real photos, noise images and random tensors);
3. checks the result here, with the serving environment's ONNX Runtime and the model's own
   runtime (its preprocessing from the catalog params), against torch's outputs, and refuses
   the model if they differ beyond `PROB_TOLERANCE` or disagree on a top-1 class.

The measurements go into `export-report.json` and the model card. The exported files' sha256
is recorded there, not pinned in the catalog: the bytes depend on the torch version.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from kaset.errors import ChecksumMismatch, ModelUnavailable
from kaset.registry.catalog import ExportSpec, ModelSpec

# progress(description, done, total): the same shape as the repository's copy progress;
# here done/total count the export's stages. Descriptions do not repeat the model id (the
# caller's display shows it).
Progress = Callable[[str, int, int], None]

# torch==2.13.0 resolves to the CPU build here (a wheel on this machine's disk); a bare "torch"
# would pull the multi-GB CUDA build from PyPI. onnx + onnxscript are what torch.onnx's
# dynamo exporter needs.
BASE_REQUIREMENTS = ("torch==2.13.0", "onnx==1.23.2", "onnxscript==0.7.2", "numpy")
# scikit-image only for its sample photos (skimage/data), read as files: without its
# dependencies it is 14 MB instead of ~200 MB.
BASE_REQUIREMENTS_NO_DEPS = ("scikit-image==0.26.0",)
# Extra pip arguments for the export venv, e.g. "--extra-index-url https://download.pytorch.org/whl/cpu"
# on a machine where PyPI's torch==2.13.0 would be the CUDA build.
PIP_ARGS_ENV = "KASET_EXPORT_PIP_ARGS"
STAMP_NAME = "kaset-export-env.json"
REPORT_NAME = "export-report.json"
REFERENCE_NAME = "reference.npz"
PROGRESS_PREFIX = "KASET-PROGRESS "  # lines the runner prints for the progress display
RUNNER = Path(__file__).parent / "exporters" / "_runner.py"
EXIT_BAD_INPUT = 3

# ONNX Runtime vs torch, on probabilities: the largest absolute difference allowed.
PROB_TOLERANCE = 1e-4
EXPORT_THREADS = 2
STAGES = 4  # venv, pip, export, check


class ExportFailed(ModelUnavailable):
    """The export environment could not be built, or the exported model does not match torch."""


def export_model(spec: ModelSpec, staging: Path, env_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Write the exported files of `spec` into `staging`; returns the report for the model card."""
    if spec.export is None:
        raise ValueError(f"model {spec.id} has no export section")
    report = _report_progress(progress)
    started = time.perf_counter()
    env = ExportEnv(env_dir)
    env_info = env.ensure(spec.export, report)
    env_seconds = time.perf_counter() - started

    report("exporting with torch", 2)
    started = time.perf_counter()
    facts = _run_exporter(spec, spec.export, env, staging, report)
    run_seconds = time.perf_counter() - started
    missing = [name for name in (*spec.export.outputs, REFERENCE_NAME) if not (staging / name).is_file()]
    if missing:
        raise ExportFailed(f"Exporting '{spec.id}' did not produce {', '.join(missing)}.")

    report("checking ONNX Runtime against torch", 3)
    started = time.perf_counter()
    check = check_against_reference(spec, staging, facts.pop("samples", {}))
    check_seconds = time.perf_counter() - started
    (staging / REFERENCE_NAME).unlink(missing_ok=True)

    result: dict[str, Any] = {
        "exporter": spec.export.exporter,
        **facts,
        "outputs": [{"name": n, "sha256": _sha256(staging / n), "size": (staging / n).stat().st_size}
                    for n in spec.export.outputs],
        "check": check,
        "environment": env_info,
        "seconds": {"environment": round(env_seconds, 1), "export": round(run_seconds, 1),
                    "check": round(check_seconds, 1)},
    }
    (staging / REPORT_NAME).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if not check["passed"]:
        raise ExportFailed(
            f"Refusing model '{spec.id}': ONNX Runtime differs from torch (max probability difference "
            f"{check['max_abs_diff']:.2e}, tolerance {PROB_TOLERANCE:.0e}; top-1 agreement "
            f"{check['top1_agreement']}). Details: {json.dumps(check['per_input'])[:2000]}"
        )
    report("exported", STAGES)
    return result


def _report_progress(progress: Progress | None) -> Callable[[str, int], None]:
    def report(description: str, stage: int) -> None:
        if progress is not None:
            progress(description, stage, STAGES)

    return report


# --- the export environment -------------------------------------------------------------------


class ExportEnv:
    """A venv with torch for exports; created once and shared by every exported model."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def stamp_path(self) -> Path:
        return self.path / STAMP_NAME

    def ensure(self, export: ExportSpec, report: Callable[[str, int], None]) -> dict[str, Any]:
        """Create the venv if needed and install what `export` needs that is not there yet."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path.with_name(self.path.name + ".lock")):
            stamp = self._read_stamp()
            if stamp is None:
                report(f"creating the export environment in {self.path}", 0)
                self._create()
                stamp = {"python": self._python_version(), "installed": [], "installed_no_deps": []}
                self._write_stamp(stamp)
            with_deps = [*BASE_REQUIREMENTS, _pillow_requirement(), *export.requirements]
            no_deps = [*BASE_REQUIREMENTS_NO_DEPS, *export.requirements_no_deps]
            if not set(with_deps) <= set(stamp["installed"]):
                # Everything the venv has promised so far plus the new needs, in one resolve: pip
                # keeps the torch pin, and two models with conflicting pins fail here, loudly,
                # instead of one silently breaking the other.
                everything = sorted(set(stamp["installed"]) | set(with_deps))
                self._pip(everything, [], report)
                stamp["installed"] = everything
                self._write_stamp(stamp)
            if not set(no_deps) <= set(stamp["installed_no_deps"]):
                self._pip(no_deps, ["--no-deps"], report)
                stamp["installed_no_deps"] = sorted(set(stamp["installed_no_deps"]) | set(no_deps))
                self._write_stamp(stamp)
        return {"path": str(self.path), "python": stamp["python"],
                "requirements": with_deps, "requirements_no_deps": no_deps}

    def _read_stamp(self) -> dict[str, Any] | None:
        if not self.python.exists() or not self.stamp_path.is_file():
            return None
        try:
            stamp: dict[str, Any] = json.loads(self.stamp_path.read_text(encoding="utf-8"))
        except ValueError:
            return None
        return stamp

    def _write_stamp(self, stamp: dict[str, Any]) -> None:
        tmp = self.stamp_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.stamp_path)

    def _create(self) -> None:
        # A half-made venv (an interrupted first install) is rebuilt from scratch.
        if self.path.exists():
            shutil.rmtree(self.path)
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        result = subprocess.run([base_python, "-m", "venv", str(self.path)], capture_output=True, text=True,
                                env=_clean_env())
        if result.returncode != 0:
            shutil.rmtree(self.path, ignore_errors=True)
            detail = (result.stderr or result.stdout).strip()[-1500:]
            raise ExportFailed(f"Could not create the export environment {self.path}: {detail} "
                               "(on Debian: apt-get install python3-venv)")

    def _python_version(self) -> str:
        out = subprocess.run([str(self.python), "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, env=_clean_env())
        return out.stdout.strip()

    def _pip(self, requirements: list[str], flags: list[str], report: Callable[[str, int], None]) -> None:
        command = [str(self.python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                   "--progress-bar", "off", *flags, *shlex.split(os.environ.get(PIP_ARGS_ENV, "")), *requirements]
        report(f"export environment: pip install {' '.join(requirements)}", 1)
        tail: collections.deque[str] = collections.deque(maxlen=40)

        def on_line(line: str) -> None:
            tail.append(line)
            if line.startswith(("Collecting", "Downloading", "Installing", "Successfully", "Processing")):
                report(f"export environment: {line.strip()[:90]}", 1)

        if _run_streaming(command, _clean_env(), on_line) != 0:
            raise ExportFailed(f"pip could not install the export requirements ({' '.join(requirements)}):\n"
                               + "\n".join(tail))


# --- running the exporter ---------------------------------------------------------------------


def _run_exporter(spec: ModelSpec, export: ExportSpec, env: ExportEnv, staging: Path,
                  report: Callable[[str, int], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kaset-export-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job = {
            "exporter": export.exporter,
            "inputs": [f.model_dump(by_alias=True) for f in export.inputs],
            "source": spec.source.model_dump(),
            "staging": str(staging.resolve()),
            "options": export.options,
            "threads": EXPORT_THREADS,
            "seed": 0,
            "random_tensors": 4,
            "result": str(result_path),
        }
        job_path.write_text(json.dumps(job), encoding="utf-8")
        env_vars = _clean_env()
        # No hub downloads at export time either; bounded threads on a shared machine.
        env_vars.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(EXPORT_THREADS)})
        tail: collections.deque[str] = collections.deque(maxlen=40)

        def on_line(line: str) -> None:
            if line.startswith(PROGRESS_PREFIX):
                report(line[len(PROGRESS_PREFIX):].strip(), 2)
            else:
                tail.append(line)

        code = _run_streaming([str(env.python), str(RUNNER), str(job_path)], env_vars, on_line)
        result: dict[str, Any] = {}
        if result_path.is_file():
            result = json.loads(result_path.read_text(encoding="utf-8"))
    if code == EXIT_BAD_INPUT and result.get("error") == "checksum":
        raise ChecksumMismatch(f"Refusing model '{spec.id}': {result['message']}. The source package may be "
                               "corrupt or a different release; fix the export requirements or the catalog entry.")
    if code == EXIT_BAD_INPUT:
        raise ExportFailed(f"Model '{spec.id}': {result.get('message')}. Is the source package in the export "
                           f"requirements? ({', '.join(export.requirements + export.requirements_no_deps)})")
    if code != 0 or "error" in result:
        raise ExportFailed(f"Exporting '{spec.id}' failed (exit code {code}):\n" + "\n".join(tail))
    return result


def _run_streaming(command: list[str], env: dict[str, str], on_line: Callable[[str], None]) -> int:
    """Run a command, handing each line of its merged stdout/stderr to `on_line` as it comes
    (pip and the export take minutes: the progress display follows them live)."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                          errors="replace", env=env, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
        return proc.wait()


def _pillow_requirement() -> str:
    """Pillow at the serving environment's version: the torch reference resizes with the same
    resampling code as the server, so the end-to-end check measures the model, not Pillow."""
    version = _version("pillow")
    return f"pillow=={version}" if version else "pillow"


def _clean_env() -> dict[str, str]:
    """The environment without the serving venv's Python settings."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"  # pip's and the exporter's lines arrive as they are printed
    # The serving venv's bin/ first on PATH would make a bare "python" the wrong one.
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process at a time builds or changes the export venv (parallel installs, test workers)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the check --------------------------------------------------------------------------------


def check_against_reference(spec: ModelSpec, folder: Path, samples: dict[str, Any]) -> dict[str, Any]:
    """Compare the model's runtime (ONNX Runtime + catalog preprocessing) with torch's outputs.

    Three measurements, all on probabilities:
    * graph: the tensors torch saw, fed straight to ONNX Runtime (the export alone);
    * end_to_end: the raw images through the runtime's own preprocessing (export + preprocessing);
    * preprocessing: the runtime's input tensor vs torch's (max abs difference, in model units).
    """
    from kaset.runtimes import runtime_class
    from kaset.runtimes.onnx_vision import OnnxVisionRuntime, softmax

    runtime = runtime_class(spec.runtime)(spec, folder)
    if not isinstance(runtime, OnnxVisionRuntime):
        raise ExportFailed(f"Model '{spec.id}': the export check supports the onnx-vision runtime, not {spec.runtime}.")
    runtime.load()
    try:
        with np.load(folder / REFERENCE_NAME) as ref:
            names = list(samples.get("images", []))
            images = [ref[f"image_{i}"] for i in range(len(names))]
            ref_images = softmax(ref["image_logits"].astype(np.float64)).astype(np.float64)
            ref_random = softmax(ref["random_logits"].astype(np.float64)).astype(np.float64)
            image_tensors, random_tensors = ref["image_tensors"], ref["random_tensors"]
        graph_images = runtime.run_tensor(image_tensors).astype(np.float64)
        graph_random = runtime.run_tensor(random_tensors).astype(np.float64)
        ours = runtime.preprocess(images)
        # The export is checked without test-time augmentation, which is a serving recipe on top.
        end_to_end = runtime.classify_unaugmented(images).astype(np.float64)
    finally:
        runtime.unload()

    per_input: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        per_input.append({
            "input": name,
            "graph_max_abs_diff": float(np.abs(graph_images[i] - ref_images[i]).max()),
            "end_to_end_max_abs_diff": float(np.abs(end_to_end[i] - ref_images[i]).max()),
            "preprocessing_max_abs_diff": float(np.abs(ours[i] - image_tensors[i]).max()),
            "torch_top1": runtime.labels[int(ref_images[i].argmax())],
            "onnx_top1": runtime.labels[int(end_to_end[i].argmax())],
            "torch_top1_prob": round(float(ref_images[i].max()), 6),
        })
    for i in range(len(ref_random)):
        per_input.append({
            "input": f"random-tensor-{i}",
            "graph_max_abs_diff": float(np.abs(graph_random[i] - ref_random[i]).max()),
            "torch_top1": runtime.labels[int(ref_random[i].argmax())],
            "onnx_top1": runtime.labels[int(graph_random[i].argmax())],
        })
    def worst(key: str) -> float:
        return max((float(r[key]) for r in per_input if key in r), default=0.0)

    max_diff = max(worst("graph_max_abs_diff"), worst("end_to_end_max_abs_diff"))
    agree = sum(r["torch_top1"] == r["onnx_top1"] for r in per_input)
    return {
        "metric": "max |p_onnxruntime - p_torch| over classes, per input",
        "tolerance": PROB_TOLERANCE,
        "max_abs_diff": max_diff,
        "graph_max_abs_diff": worst("graph_max_abs_diff"),
        "end_to_end_max_abs_diff": worst("end_to_end_max_abs_diff"),
        "preprocessing_max_abs_diff": worst("preprocessing_max_abs_diff"),
        "top1_agreement": f"{agree}/{len(per_input)}",
        "passed": max_diff <= PROB_TOLERANCE and agree == len(per_input),
        "per_input": per_input,
        "onnxruntime": _version("onnxruntime"),
        "pillow": _version("pillow"),
    }


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
