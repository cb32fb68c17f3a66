"""Image classification with ONNX Runtime; preprocessing declared in the catalog params.

The served file is an ONNX graph (usually exported from PyTorch once, at install time, by
`kaset.registry.export`), so torch never loads here. Preprocessing is Pillow + numpy and copies
torchvision's arithmetic where the torch reference uses it, so the exported model sees the same
tensor it saw in torch (the export check measures the difference and records it in the card):

* `resize: N` scales the shorter side to N and the longer one to int(N * long / short)
  (torchvision truncates, it does not round); `resize: [H, W]` squashes to exactly H x W.
  Pillow always antialiases, as torchvision does for PIL images.
* `crop: N | [H, W]` is a center crop whose offsets are int(round((size - crop) / 2)), with
  zero padding when the image is smaller than the crop, as torchvision's CenterCrop.
* Then `(pixel * scale - mean) / std` per channel (torchvision's ToTensor + Normalize is
  scale 1/255 with mean/std in 0-1 units; TensorFlow-trained models often use scale 1,
  mean 127, std 128), in `channel_order` and `layout` order.

params: model_file (model.onnx), labels_file (labels.json: a JSON list of names, index-aligned
with the output), resize, crop, interpolation (bilinear | bicubic | nearest | lanczos; default
bilinear), scale (default 1/255), mean (default 0), std (default 1), layout (NCHW | NHWC),
channel_order (RGB | BGR), output (logits | probabilities: softmax is applied to logits),
intra_op_threads (default 2), intra_op_spinning (default false, see below), max_batch
(default 32: larger requests run in chunks of this many, to bound memory).

ONNX Runtime's intra-op worker threads busy-wait after every run by default (measured here:
about 40 ms of CPU in the 100 ms after a call). On a small machine that spinning core is
taken from the event loop, the upload decoders, the other models and the neighbours' jobs:
with one core of other load, mango-disease ran at 31 images/s spinning and 65 without.
So spinning is off unless a model's params turn it on (`intra_op_spinning: true`), which can
help a dedicated machine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.runtimes.base import ImageClassifier

DEFAULT_SCALE = 1.0 / 255.0
DEFAULT_THREADS = 2
DEFAULT_MAX_BATCH = 32
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


def _size_param(value: Any, name: str) -> tuple[int, int] | None:
    """None, N or [H, W] -> None or (H, W); N alone keeps its meaning per param (see callers)."""
    if value is None:
        return None
    if isinstance(value, int) and value > 0:
        return (value, value)
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"params.{name} must be a positive integer or [height, width], not {value!r}")


def _channels(value: Any, default: float, name: str) -> np.ndarray:
    if value is None:
        return np.full(3, default, dtype=np.float32)
    array = np.asarray(value, dtype=np.float32).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, 3)
    if array.size != 3:
        raise ValueError(f"params.{name} must be one number or three, not {value!r}")
    return array


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision's size for Resize(int) on a PIL image: (new_height, new_width)."""
    if width <= height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def center_crop(image: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """torchvision's CenterCrop on an HxWxC array, padding with zeros if the image is smaller."""
    height, width = image.shape[:2]
    if crop_height > height or crop_width > width:
        pad_top = (crop_height - height) // 2 if crop_height > height else 0
        pad_left = (crop_width - width) // 2 if crop_width > width else 0
        pad_bottom = (crop_height - height + 1) // 2 if crop_height > height else 0
        pad_right = (crop_width - width + 1) // 2 if crop_width > width else 0
        image = np.pad(image, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
        height, width = image.shape[:2]
        if height == crop_height and width == crop_width:
            return image
    # round() as torchvision does (half to even), not floor.
    top = round((height - crop_height) / 2.0)
    left = round((width - crop_width) / 2.0)
    return image[top:top + crop_height, left:left + crop_width]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs: np.ndarray = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs


class OnnxVisionRuntime(ImageClassifier):
    _session: Any = None
    _labels: list[str]

    def load(self) -> None:
        if self.model_dir is None:
            raise ModelUnavailable(f"Model '{self.spec.id}' has no installed files.")
        import onnxruntime as ort
        from PIL import Image

        p = self.params
        resize = p.get("resize")
        self._resize_shorter = resize if isinstance(resize, int) else None
        self._resize_exact = None if isinstance(resize, int) else _size_param(resize, "resize")
        if isinstance(resize, int) and resize <= 0:
            raise ValueError(f"model {self.spec.id}: params.resize must be positive")
        self._crop = _size_param(p.get("crop"), "crop")
        interpolation = str(p.get("interpolation", "bilinear")).lower()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"model {self.spec.id}: params.interpolation must be one of {INTERPOLATIONS}")
        self._resample = getattr(Image.Resampling, interpolation.upper())
        scale = float(p.get("scale", DEFAULT_SCALE))
        mean = _channels(p.get("mean"), 0.0, "mean")
        std = _channels(p.get("std"), 1.0, "std")
        if np.any(std == 0):
            raise ValueError(f"model {self.spec.id}: params.std must not be zero")
        # (x * scale - mean) / std folded into one multiply-add over the uint8 batch.
        self._mul = (scale / std).astype(np.float32)
        self._add = (-mean / std).astype(np.float32)
        self._layout = str(p.get("layout", "NCHW")).upper()
        self._bgr = str(p.get("channel_order", "RGB")).upper() == "BGR"
        self._output = str(p.get("output", "logits")).lower()
        if self._layout not in ("NCHW", "NHWC") or self._output not in ("logits", "probabilities"):
            raise ValueError(f"model {self.spec.id}: params.layout must be NCHW|NHWC and output logits|probabilities")
        self._max_batch = int(p.get("max_batch", DEFAULT_MAX_BATCH))
        self._tta = [str(t).lower() for t in p.get("tta", [])]
        if any(t != "hflip" for t in self._tta):
            raise ValueError(f"model {self.spec.id}: params.tta supports only 'hflip'")

        labels_path = self.model_dir / str(p.get("labels_file", "labels.json"))
        labels = json.loads(labels_path.read_text(encoding="utf-8"))
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ModelUnavailable(f"Model '{self.spec.id}': {labels_path.name} must be a JSON list of names.")
        self._labels = labels

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(p.get("intra_op_threads", DEFAULT_THREADS))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if p.get("intra_op_spinning", False) else "0")
        model_path = self.model_dir / str(p.get("model_file", "model.onnx"))
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
        self._input_name = session.get_inputs()[0].name
        input_shape = session.get_inputs()[0].shape
        output_shape = session.get_outputs()[0].shape
        self._size = self._output_size(input_shape)
        if isinstance(output_shape[-1], int) and output_shape[-1] != len(labels):
            raise ModelUnavailable(
                f"Model '{self.spec.id}' has {output_shape[-1]} outputs but {len(labels)} labels.")
        self._session = session

    def _output_size(self, input_shape: list[Any]) -> tuple[int, int]:
        """The preprocessed image size: from the params, checked against the graph's input."""
        declared = self._crop or self._resize_exact
        if declared is None:
            raise ValueError(f"model {self.spec.id}: a batch needs one image size; set params.crop "
                             "or params.resize as [height, width]")
        spatial = input_shape[2:4] if self._layout == "NCHW" else input_shape[1:3]
        if all(isinstance(d, int) for d in spatial) and tuple(spatial) != declared:
            raise ModelUnavailable(f"Model '{self.spec.id}' takes {spatial[0]}x{spatial[1]} images but its "
                                   f"params produce {declared[0]}x{declared[1]}.")
        return declared

    def unload(self) -> None:
        self._session = None

    def warmup(self) -> None:
        self.classify([np.full((*self._size, 3), 128, dtype=np.uint8)])

    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    def preprocess_one(self, image: np.ndarray) -> np.ndarray:
        """One RGB uint8 HxWx3 image -> uint8 array of the model's input size (HxWx3)."""
        from PIL import Image

        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise InvalidRequest(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        target = None
        if self._resize_shorter is not None:
            target = resized_size(height, width, self._resize_shorter)
        elif self._resize_exact is not None:
            target = self._resize_exact
        if target is not None and target != (height, width):
            image = np.asarray(Image.fromarray(image).resize((target[1], target[0]), self._resample))
        if self._crop is not None:
            image = center_crop(image, *self._crop)
        if image.shape[:2] != self._size:
            raise InvalidRequest(f"image preprocessed to {image.shape[:2]}, model needs {self._size}")
        return image

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """Images -> the float32 batch the graph takes."""
        batch = np.stack([self.preprocess_one(img) for img in images]).astype(np.float32)
        batch *= self._mul
        batch += self._add
        if self._bgr:
            batch = batch[..., ::-1]
        if self._layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch)

    def run_tensor(self, batch: np.ndarray) -> np.ndarray:
        """A preprocessed float32 batch -> probabilities (n, classes)."""
        if self._session is None:
            raise ModelUnavailable(f"Model '{self.spec.id}' is not loaded.")
        scores = np.asarray(self._session.run(None, {self._input_name: batch})[0], dtype=np.float32)
        return softmax(scores) if self._output == "logits" else scores

    def classify(self, images: list[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, len(self._labels)), dtype=np.float32)
        if self._tta:
            # Test-time augmentation: the mirror image is classified in the same batch and the
            # two probability vectors averaged, which smooths out orientation-specific guesses.
            both = self.classify_unaugmented([*images, *(np.ascontiguousarray(i[:, ::-1]) for i in images)])
            return np.asarray((both[: len(images)] + both[len(images):]) / 2, dtype=np.float32)
        return self.classify_unaugmented(images)

    def classify_unaugmented(self, images: list[np.ndarray]) -> np.ndarray:
        """The model alone, in batches of at most max_batch (the export check compares this)."""
        chunks = [self.run_tensor(self.preprocess(images[i:i + self._max_batch]))
                  for i in range(0, len(images), self._max_batch)]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
