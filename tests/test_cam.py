"""Class activation maps that can be wrong: a model trained to find a small object must look at it."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from effnet import ScalingSpec, build_model
from effnet.analysis.cam import METHODS, explain, overlay, target_layer
from effnet.arch.preprocess import to_model_input
from effnet.data.images import decode_image

COLOURS = np.array([[230, 30, 30], [30, 200, 30], [40, 40, 230], [230, 230, 30]])
BOX = 8


def object_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey noise with one 8x8 square whose colour is the class, at a random position."""
    rng = np.random.default_rng(seed)
    images = rng.integers(60, 140, (n, 32, 32, 3)).astype(np.uint8)
    labels = rng.integers(0, len(COLOURS), n)
    corners = rng.integers(0, 32 - BOX, (n, 2))
    for img, label, (y, x) in zip(images, labels, corners, strict=True):
        img[y : y + BOX, x : x + BOX] = COLOURS[label]
    return images, labels, corners


@pytest.fixture(scope="module")
def object_model():
    """A tiny EfficientNet (4x4 final map) trained for a few seconds on the object images."""
    spec = ScalingSpec(phi=-4, gamma=1.0, num_classes=len(COLOURS), geometry="cifar")
    images, labels, _ = object_images(640, seed=0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels)
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    for _ in range(2):
        for idx in torch.randperm(len(y)).split(64):
            loss = F.cross_entropy(model(to_model_input(x[idx], spec)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():  # BatchNorm statistics of the final weights (few steps: the running ones lag)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        for idx in torch.arange(len(y)).split(128):
            model(to_model_input(x[idx], spec))
    return model.eval(), spec


@pytest.mark.parametrize("method, least", [("gradcam", 0.75), ("gradcam++", 0.7)])
def test_cam_peak_falls_on_the_object(object_model, method, least):
    model, spec = object_model
    images, labels, corners = object_images(40, seed=1)
    hits = correct = 0
    for img, label, (y, x) in zip(images, labels, corners, strict=True):
        result = explain(model, spec, Image.fromarray(img), method=method)
        py, px = np.unravel_index(result.heatmap.argmax(), result.heatmap.shape)
        margin = 4  # one cell of the 4x4 map is 8 px; allow half a cell around the square
        hits += (y - margin <= py < y + BOX + margin) and (x - margin <= px < x + BOX + margin)
        correct += result.top5[0][0] == label
    assert correct / len(labels) >= 0.9, "the model did not learn the task, so the CAM test would mean nothing"
    assert hits / len(labels) >= least, f"{method}: peak on the object in {hits}/{len(labels)} images"


def test_explaining_another_class_changes_the_map(object_model):
    model, spec = object_model
    images, _labels, _ = object_images(1, seed=5)
    img = Image.fromarray(images[0])
    own = explain(model, spec, img, "gradcam")
    other = explain(model, spec, img, "gradcam", target_class=(own.top5[0][0] + 1) % len(COLOURS))
    assert own.target_class == own.top5[0][0] and other.target_class != own.target_class
    assert not np.allclose(own.heatmap, other.heatmap)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_returns_a_map_the_size_of_the_input(object_model, method):
    model, spec = object_model
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    result = explain(model, spec, img, method=method)
    assert result.heatmap.shape == (50, 70) and result.heatmap.dtype == np.float32
    assert result.heatmap.min() >= 0 and result.heatmap.max() <= 1
    assert len(result.top5) == 4 and result.top5 == sorted(result.top5, key=lambda t: -t[1])
    assert abs(sum(p for _, p in result.top5) - 1) < 1e-4
    assert overlay(img, result.heatmap).size == (70, 50)


def test_cam_never_changes_a_training_models_mode(object_model):
    _, spec = object_model
    model = build_model(spec).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explain(model, spec, Image.new("RGB", (32, 32)))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_target_layer_is_never_a_1x1_map():
    paper_at_32 = ScalingSpec.official("b0", geometry="imagenet", base_resolution=32)
    assert target_layer(paper_at_32).module == "features.3"  # stage 3 ends at 4x4; later maps are 2x2 and 1x1
    assert target_layer(ScalingSpec.official("b0")).module == "features.8"  # the head: 4x4 in the cifar geometry


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def odd_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    rotated = rgb.copy()
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:])
    return {
        "gray.png": encoded(rgb.convert("L"), "PNG"),
        "gray16.png": encoded(Image.fromarray((rng.integers(0, 65535, (30, 30))).astype(np.uint16)), "PNG"),
        "palette.png": encoded(rgb.convert("P"), "PNG"),
        "alpha.png": encoded(rgb.convert("RGBA"), "PNG"),
        "cmyk.jpg": encoded(rgb.convert("CMYK"), "JPEG"),
        "rotated.jpg": encoded(rotated, "JPEG", exif=exif),
        "animated.gif": animated.getvalue(),
        "one-pixel.png": encoded(Image.new("RGB", (1, 1), "white"), "PNG"),
        "thin.png": encoded(Image.new("RGB", (4000, 2), "white"), "PNG"),
        "photo.webp": encoded(rgb, "WEBP"),
    }


@pytest.mark.parametrize("name", list(odd_images()))
def test_odd_but_valid_images_are_explained(object_model, name):
    model, spec = object_model
    data = odd_images()[name]
    img = decode_image(data, name)
    assert img.mode == "RGB"
    result = explain(model, spec, data)
    assert result.heatmap.shape == (img.height, img.width)


def test_exif_rotation_is_honoured_and_16_bit_is_scaled_not_clipped():
    assert decode_image(odd_images()["rotated.jpg"]).size == (40, 60)  # stored 60 wide, shown 40 wide
    ramp = Image.fromarray(np.linspace(0, 65535, 256, dtype=np.uint16).reshape(16, 16))
    gray = np.asarray(decode_image(encoded(ramp, "PNG")))[..., 0]
    assert gray.min() == 0 and gray.max() == 255 and len(np.unique(gray)) > 200
    frame = np.asarray(decode_image(odd_images()["animated.gif"]))
    assert frame[0, 0, 0] > 200 and frame[0, 0, 2] < 50  # the first (red) frame


def bomb() -> bytes:
    """A PNG header claiming 100k x 100k pixels: tiny file, 10 G pixels if decoded."""
    small = encoded(Image.new("L", (1, 1)), "PNG")
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return small[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + small[33:]


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"%PDF-1.4 definitely not an image", "not an image"),
    (encoded(Image.new("RGB", (300, 300), "red"), "JPEG")[:400], "truncated"),
    (bomb(), "decompression bomb"),
], ids=["empty", "pdf", "truncated-jpeg", "bomb"])
def test_bad_files_get_a_clear_value_error(object_model, data, message):
    model, spec = object_model
    with pytest.raises(ValueError, match=message):
        explain(model, spec, data)
