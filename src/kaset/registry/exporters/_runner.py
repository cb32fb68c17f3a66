"""Entry point of an export, run by path with the export venv's Python:

    <export-env>/bin/python .../kaset/registry/exporters/_runner.py job.json

It must not import the rest of Kaset (pydantic, the server's numpy, ...) and must not put the
serving environment's site-packages on sys.path, so it registers bare `kaset`,
`kaset.registry` and `kaset.registry.exporters` package objects that point at the source
folders, then imports the exporter module through them.

job.json: {exporter, inputs: [{name, from, sha256, size}], source: {kind, packages | path},
staging, options, threads, seed, random_tensors, result}. The result file gets the exporter's
facts plus the verified inputs, or {"error": "checksum"|"missing", "message"} (exit code 3).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 3


class BadInput(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _register_packages() -> None:
    here = Path(__file__).resolve().parent
    # Running a script puts its own folder first on sys.path; the modules here are imported
    # as kaset.registry.exporters.* instead, so drop it to avoid loading them twice.
    if sys.path and Path(sys.path[0] or ".").resolve() == here:
        sys.path.pop(0)
    for name, folder in (("kaset", here.parent.parent), ("kaset.registry", here.parent),
                         ("kaset.registry.exporters", here)):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(folder)]
            sys.modules[name] = module


def _locate(relative: str, source: dict[str, Any]) -> Path:
    if source["kind"] == "path":
        path = Path(source["path"]).expanduser() / relative
        if path.is_file():
            return path
    else:
        for package in source["packages"]:
            try:
                candidate = Path(str(importlib.metadata.distribution(package).locate_file(relative)))
            except importlib.metadata.PackageNotFoundError:
                continue
            if candidate.is_file():
                return candidate
    raise BadInput("missing", f"source file {relative} not found in {source}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verified_inputs(job: dict[str, Any]) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """Every source file, checked against the catalog's sha256 before torch ever loads it."""
    paths: dict[str, Path] = {}
    facts: list[dict[str, Any]] = []
    for spec in job["inputs"]:
        if spec.get("parts"):
            raise BadInput("missing", f"input '{spec['name']}': files split into parts are not supported for exports")
        path = _locate(spec.get("from") or spec["name"], job["source"])
        digest = _sha256(path)
        if digest != spec["sha256"]:
            raise BadInput("checksum", f"file '{spec['name']}' ({path}) has sha256 {digest}, but the catalog "
                                       f"expects {spec['sha256']}")
        paths[spec["name"]] = path
        facts.append({"name": spec["name"], "from": str(path), "sha256": digest, "size": path.stat().st_size})
    return paths, facts


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    result_path = Path(job["result"])
    _register_packages()
    from kaset.registry.exporters._common import ExportJob, progress

    progress("verifying source weights")
    try:
        inputs, input_facts = _verified_inputs(job)
    except BadInput as exc:
        result_path.write_text(json.dumps({"error": exc.kind, "message": str(exc)}), encoding="utf-8")
        return EXIT_BAD_INPUT
    module_name, _, function_name = job["exporter"].partition(":")
    module = importlib.import_module(f"kaset.registry.exporters.{module_name}")
    export = getattr(module, function_name or "export")
    started = time.perf_counter()
    facts: dict[str, Any] = export(ExportJob(
        staging=Path(job["staging"]), inputs=inputs, options=job.get("options", {}),
        threads=int(job.get("threads", 2)), seed=int(job.get("seed", 0)),
        random_tensors=int(job.get("random_tensors", 4)),
    ))
    facts["inputs"] = input_facts
    facts["export_seconds"] = round(time.perf_counter() - started, 2)
    facts["python"] = sys.version.split()[0]
    result_path.write_text(json.dumps(facts), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
