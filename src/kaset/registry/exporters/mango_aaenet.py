"""AA-ENet mango disease classifier (PyPI `mango-disease-ai`) to ONNX.

What shapes this exporter (checked against mango-disease-ai 0.1.3):

* The package's `__init__` imports its whole app (OpenCV, SciPy, transformers, fpdf2) and
  `analyze()` downloads CLIP from the hub. Only `mango_disease_ai/model.py` is needed, so it is
  loaded by file path, and the package is installed with --no-deps.
* model.py needs timm, and timm imports torchvision, which is loaded through
  `import_torchvision()` (see there).
* `load_model()` builds AAENet (timm efficientnet_b0 backbone, no pretrained download) and loads
  the weights file next to model.py; it is pointed at the verified file instead.
* The reference preprocessing is the package's own `eval_tf` (inference.py):
  Resize((IMG_SIZE, IMG_SIZE)) (a squash, no crop), ToTensor, Normalize(ImageNet mean/std),
  rebuilt here from model.py's constants because inference.py imports OpenCV and SciPy.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from kaset.registry.exporters._common import (
    ExportJob,
    distribution_file,
    export_onnx,
    import_torchvision,
    progress,
    torch_threads,
    versions,
    write_labels,
    write_reference,
)


def _load_model_module() -> Any:
    path = distribution_file("mango-disease-ai", "mango_disease_ai/model.py")
    if path is None:
        raise RuntimeError("mango_disease_ai/model.py is missing from the export environment")
    spec = importlib.util.spec_from_file_location("mango_disease_ai_model", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export(job: ExportJob) -> dict[str, Any]:
    import_torchvision()  # before model.py imports timm
    from torchvision import transforms

    with torch_threads(job.threads):
        progress("loading AA-ENet")
        aaenet = _load_model_module()
        aaenet.MODEL_PATH = str(job.inputs["weights"])
        model = aaenet.load_model("cpu")
        model.eval()
        size = int(aaenet.IMG_SIZE)
        labels = [str(c) for c in aaenet.CLASSES]
        if model.head.out_features != len(labels):
            raise RuntimeError(f"AA-ENet has {model.head.out_features} outputs for {len(labels)} classes")
        reference = transforms.Compose([
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(list(aaenet.IMAGENET_MEAN), list(aaenet.IMAGENET_STD)),
        ])
        progress("exporting AA-ENet to ONNX")
        exporter = export_onnx(model, job.staging / "model.onnx", (size, size))
        progress("running torch on the sample inputs")
        samples = write_reference(job, model, reference, (size, size))
    write_labels(job.staging, labels)
    return {
        "model": "AA-ENet",
        "onnx_exporter": exporter,
        "input": [3, size, size],
        "classes": len(labels),
        "torch_reference_preprocessing": f"mango_disease_ai eval_tf: Resize(({size}, {size})), ToTensor, "
                                         f"Normalize({list(aaenet.IMAGENET_MEAN)}, {list(aaenet.IMAGENET_STD)})",
        "samples": samples,
        "versions": versions(["torch", "torchvision", "onnx", "onnxscript", "numpy", "pillow", "timm",
                              "mango-disease-ai"]),
    }
