"""Shared helpers for exporters. Runs in the export venv only (torch imported lazily)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROGRESS_PREFIX = "KASET-PROGRESS "
REFERENCE_NAME = "reference.npz"
# Real photos for the ONNX-vs-torch check. scikit-image is installed in the export venv with
# --no-deps for these files alone; it is never imported.
SAMPLE_PHOTOS = ("skimage/data/chelsea.png", "skimage/data/coffee.png", "skimage/data/astronaut.png",
                 "skimage/data/rocket.jpg")
# Noise images of awkward sizes (one smaller than the crop, so it is upscaled) check the
# resize/crop arithmetic of the server's preprocessing against torchvision's.
NOISE_IMAGE_SIZES = ((333, 517), (97, 61))


@dataclass
class ExportJob:
    staging: Path
    inputs: dict[str, Path]  # catalog input name -> verified file
    options: dict[str, Any] = field(default_factory=dict)
    threads: int = 2
    seed: int = 0
    random_tensors: int = 4


def progress(message: str) -> None:
    """A line the parent process turns into a progress update."""
    print(PROGRESS_PREFIX + message, flush=True)


def import_torchvision() -> Any:
    """Import torchvision beside a torch it was not built for.

    The PyPI torchvision wheel links its native ops against the CUDA build of torch; beside the
    CPU build they fail to load and `import torchvision` dies registering fake kernels for them
    ("operator torchvision::nms does not exist"). Exports need only its pure-Python parts
    (transforms; timm's imports), so when the plain import fails, retry with
    `torch.library.register_fake` turned into a no-op while torchvision imports.
    """
    import torch

    try:
        import torchvision

        return torchvision
    except RuntimeError as exc:
        if "does not exist" not in str(exc):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    original = torch.library.register_fake

    def skip(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        return lambda fn: fn

    torch.library.register_fake = skip
    try:
        import torchvision
    finally:
        torch.library.register_fake = original
    return torchvision


def distribution_file(package: str, relative: str) -> Path | None:
    try:
        path = Path(str(importlib.metadata.distribution(package).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def versions(packages: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for package in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def write_labels(staging: Path, labels: Sequence[str]) -> None:
    if len(set(labels)) != len(labels):
        raise ValueError("class labels must be unique")
    (staging / "labels.json").write_text(json.dumps(list(labels), ensure_ascii=False, indent=0) + "\n",
                                         encoding="utf-8")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def export_onnx(model: Any, path: Path, input_size: tuple[int, int]) -> str:
    """Export `model` (NCHW float input, one output) with a dynamic batch axis.

    Returns which exporter produced the file: torch.export-based ("dynamo", the default since
    torch 2.9), or the TorchScript one if dynamo cannot trace the model.
    """
    import torch

    example = (torch.randn(2, 3, *input_size),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        torch.onnx.export(model, example, str(path), input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
        return "dynamo"
    except Exception as exc:  # any tracing failure: fall back to the older exporter
        print(f"dynamo export failed ({type(exc).__name__}: {exc}); using the TorchScript exporter", flush=True)
        path.unlink(missing_ok=True)
    torch.onnx.export(model, example, str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    return "torchscript"


def sample_images(seed: int) -> tuple[list[str], list[Any]]:
    """Real photos (RGB uint8 arrays) plus seeded noise images, with their names."""
    import numpy as np
    from PIL import Image

    names: list[str] = []
    images: list[Any] = []
    for relative in SAMPLE_PHOTOS:
        path = distribution_file("scikit-image", relative)
        if path is None:
            continue
        with Image.open(path) as img:
            images.append(np.asarray(img.convert("RGB")))
        names.append(Path(relative).name)
    rng = np.random.default_rng(seed)
    for height, width in NOISE_IMAGE_SIZES:
        images.append(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
        names.append(f"noise-{height}x{width}")
    return names, images


def write_reference(job: ExportJob, model: Any, transform: Callable[[Any], Any],
                    input_size: tuple[int, int]) -> dict[str, Any]:
    """Run torch on sample inputs and save what the parent needs to check ONNX Runtime.

    `transform` is the torch reference preprocessing (PIL image -> CHW float tensor), the one
    the model's own package (or its training recipe) uses. Saved in reference.npz:
    image_<i> (uint8 HWC), image_tensors and image_logits (after `transform`), and
    random_tensors / random_logits (model-space inputs that exercise the graph alone).
    """
    import numpy as np
    import torch
    from PIL import Image

    names, images = sample_images(job.seed)
    image_tensors = torch.stack([transform(Image.fromarray(img)) for img in images])
    generator = torch.Generator().manual_seed(job.seed)
    random_tensors = torch.randn(job.random_tensors, 3, *input_size, generator=generator)
    with torch.no_grad():
        image_logits = model(image_tensors)
        random_logits = model(random_tensors)
    arrays = {f"image_{i}": img for i, img in enumerate(images)}
    np.savez(job.staging / REFERENCE_NAME, image_tensors=image_tensors.numpy(), image_logits=image_logits.numpy(),
             random_tensors=random_tensors.numpy(), random_logits=random_logits.numpy(), **arrays)
    return {"images": names, "random_tensors": job.random_tensors}
