"""ONNX Runtime image classifiers with the real exported models, on real photos.

Photos: scikit-image's bundled data (chelsea the cat, coffee, astronaut, rocket), read as files
(`pip install scikit-image`), and Debian's darknet package (`apt-get install darknet`: dog,
eagle, ...). A test whose photos are missing is skipped and says what to install.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kaset.errors import InvalidRequest
from kaset.registry.catalog import ModelSpec
from kaset.runtimes import runtime_class
from kaset.runtimes.onnx_vision import OnnxVisionRuntime, center_crop, resized_size

Installed = Callable[[str], tuple[ModelSpec, Path]]

DARKNET_DATA = Path("/usr/share/darknet/data")
IMAGENET_DOGS = range(151, 269)  # ImageNet-1k indices 151-268 are dog breeds
CATS = {"tabby", "tiger cat", "Egyptian cat"}
MANGO_CLASSES = ["Anthracnose", "Bacterial Canker", "Healthy", "Powdery Mildew", "Scab", "Sooty Mould",
                 "Stem End Rot"]


def skimage_photo(name: str) -> np.ndarray:
    try:
        path = Path(str(importlib.metadata.distribution("scikit-image").locate_file(f"skimage/data/{name}")))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs scikit-image's sample photos: pip install scikit-image")
    return read_rgb(path)


def darknet_photo(name: str) -> np.ndarray:
    path = DARKNET_DATA / name
    if not path.is_file():
        pytest.skip("needs darknet's sample photos: apt-get install darknet")
    return read_rgb(path)


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def make(installed: Installed, model_id: str, **params: object) -> OnnxVisionRuntime:
    spec, folder = installed(model_id)
    if params:
        spec = spec.model_copy(update={"params": {**spec.params, **params}})
    runtime = OnnxVisionRuntime(spec, folder)
    runtime.load()
    return runtime


@pytest.fixture(scope="module")
def lite(installed: Installed) -> Iterator[OnnxVisionRuntime]:
    runtime = make(installed, "efficientnet-lite0")
    runtime.warmup()
    yield runtime
    runtime.unload()


@pytest.fixture(scope="module")
def mango(installed: Installed) -> Iterator[OnnxVisionRuntime]:
    runtime = make(installed, "mango-disease")
    runtime.warmup()
    yield runtime
    runtime.unload()


def top1(runtime: OnnxVisionRuntime, image: np.ndarray) -> str:
    return runtime.labels[int(runtime.classify([image])[0].argmax())]


def test_catalog_names_this_runtime(installed: Installed) -> None:
    spec, _ = installed("efficientnet-lite0")
    assert runtime_class(spec.runtime) is OnnxVisionRuntime


def test_imagenet_labels(lite: OnnxVisionRuntime) -> None:
    labels = lite.labels
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[0] == "tench" and labels[281] == "tabby" and labels[967] == "espresso"


def test_chelsea_is_a_cat(lite: OnnxVisionRuntime) -> None:
    assert top1(lite, skimage_photo("chelsea.png")) in CATS


def test_coffee_is_espresso_or_a_cup(lite: OnnxVisionRuntime) -> None:
    assert top1(lite, skimage_photo("coffee.png")) in {"espresso", "cup", "coffee mug"}


def test_darknet_dog_is_a_dog_breed(lite: OnnxVisionRuntime) -> None:
    probs = lite.classify([darknet_photo("dog.jpg")])[0]
    assert int(probs.argmax()) in IMAGENET_DOGS, lite.labels[int(probs.argmax())]


def test_darknet_eagle_is_a_bird_of_prey(lite: OnnxVisionRuntime) -> None:
    probs = lite.classify([darknet_photo("eagle.jpg")])[0]
    # ImageNet's "kite" is the bird; "bald eagle" is in the top 3 either way.
    assert "bald eagle" in [lite.labels[i] for i in np.argsort(probs)[::-1][:3]]


def test_probabilities_shape_and_sum(lite: OnnxVisionRuntime) -> None:
    probs = lite.classify([skimage_photo("rocket.jpg"), skimage_photo("astronaut.png")])
    assert probs.shape == (2, 1000) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()


def test_batch_equals_one_by_one(lite: OnnxVisionRuntime) -> None:
    images = [skimage_photo("chelsea.png"), skimage_photo("coffee.png"), skimage_photo("astronaut.png"),
              skimage_photo("rocket.jpg"), np.zeros((50, 80, 3), dtype=np.uint8)]
    batched = lite.classify(images)
    single = np.concatenate([lite.classify([img]) for img in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert (batched.argmax(axis=1) == single.argmax(axis=1)).all()


def test_large_requests_run_in_chunks(installed: Installed, lite: OnnxVisionRuntime) -> None:
    chunked = make(installed, "efficientnet-lite0", max_batch=2)
    images = [skimage_photo("chelsea.png"), skimage_photo("coffee.png"), skimage_photo("rocket.jpg")]
    np.testing.assert_allclose(chunked.classify(images), lite.classify(images), atol=1e-5)
    assert lite.classify([]).shape == (0, 1000)


def test_bgr_order_flips_the_channels(installed: Installed, lite: OnnxVisionRuntime) -> None:
    bgr = make(installed, "efficientnet-lite0", channel_order="BGR")
    image = skimage_photo("coffee.png")
    np.testing.assert_array_equal(bgr.preprocess([image]), lite.preprocess([image])[:, ::-1])


def test_bad_images_are_refused(lite: OnnxVisionRuntime) -> None:
    with pytest.raises(InvalidRequest):
        lite.classify([np.zeros((32, 32), dtype=np.uint8)])
    with pytest.raises(InvalidRequest):
        lite.classify([np.zeros((32, 32, 3), dtype=np.float32)])
    with pytest.raises(InvalidRequest):
        lite.classify([np.zeros((0, 32, 3), dtype=np.uint8)])


def test_a_batch_needs_one_image_size(installed: Installed) -> None:
    spec, folder = installed("efficientnet-lite0")
    params = {k: v for k, v in spec.params.items() if k != "crop"}
    with pytest.raises(ValueError, match="one image size"):
        OnnxVisionRuntime(spec.model_copy(update={"params": params}), folder).load()


def test_preprocessing_arithmetic_follows_torchvision() -> None:
    # Resize(256) keeps the aspect ratio and truncates the long side: 451x300 -> 384x256.
    assert resized_size(300, 451, 256) == (256, 384)
    assert resized_size(451, 300, 256) == (384, 256)
    # CenterCrop rounds half to even: (31 - 24) / 2 = 3.5 -> 4.
    image = np.arange(31 * 31 * 3, dtype=np.uint8).reshape(31, 31, 3)
    np.testing.assert_array_equal(center_crop(image, 24, 24), image[4:28, 4:28])
    # A crop larger than the image pads with zeros around it.
    padded = center_crop(np.full((2, 3, 3), 7, dtype=np.uint8), 5, 5)
    assert padded.shape == (5, 5, 3) and padded.sum() == 7 * 2 * 3 * 3


def test_mango_model_returns_its_seven_classes(mango: OnnxVisionRuntime) -> None:
    assert mango.labels == MANGO_CLASSES
    probs = mango.classify([skimage_photo("chelsea.png"), skimage_photo("coffee.png")])
    assert probs.shape == (2, 7) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_mango_batch_equals_one_by_one(mango: OnnxVisionRuntime) -> None:
    images = [skimage_photo("astronaut.png"), skimage_photo("rocket.jpg"), np.full((300, 200, 3), 90, np.uint8)]
    single = np.concatenate([mango.classify([img]) for img in images])
    np.testing.assert_allclose(mango.classify(images), single, atol=1e-5)


def test_serving_never_imports_torch(lite: OnnxVisionRuntime, mango: OnnxVisionRuntime) -> None:
    lite.classify([skimage_photo("coffee.png")])
    mango.classify([skimage_photo("coffee.png")])
    assert "torch" not in sys.modules and "torchvision" not in sys.modules
