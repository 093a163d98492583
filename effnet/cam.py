"""Class activation maps: where a model looks when it predicts a class.

``explain(model, spec, image)`` preprocesses the image with the spec's one preprocessing function,
runs a method from pytorch-grad-cam on the right layer, and maps the heatmap back onto the whole
input image. Design points:

- Target layer: the last feature map that is at least 4x4 (from the spec's model card). The head
  of a paper-geometry model at 32 px is 1x1, which would make every CAM a constant.
- pytorch-grad-cam puts the model into eval mode and hooks it. A model in training mode is never
  touched: ``explain`` then works on a copy. All CAMs of a process run on one worker thread, so two
  app sessions never mix their hooks on a shared (cached) model.
- Score-CAM runs one forward pass per channel of the target layer; ours masks the input channel
  chunk by channel chunk, so memory stays bounded on wide heads (B7's has 2,560 channels).
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from effnet import runs
from effnet.card import model_card
from effnet.images import decode_image, release_memory, to_uint8_tensor
from effnet.preprocess import to_model_input
from effnet.scaling import ScalingSpec

MIN_CAM_SIZE = 4
# Uploads are shrunk to this side when decoded: the models see 32-600 px, a projector shows ~1,000.
DISPLAY_SIDE = 1024
SCORECAM_MEMORY = 2 * 1024**3


class ChunkedScoreCAM(ScoreCAM):
    """Score-CAM with bounded memory: channels are upsampled and scored ``batch_size`` at a time."""

    batch_size = 32

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        with torch.no_grad():
            acts = torch.from_numpy(activations).to(self.device)
            scores = torch.empty(acts.shape[:2])
            for n, target in enumerate(targets):
                for i in range(0, acts.shape[1], self.batch_size):
                    chunk = nn.functional.interpolate(acts[n : n + 1, i : i + self.batch_size],
                                                      size=input_tensor.shape[-2:], mode="bilinear",
                                                      align_corners=True)[0]
                    flat = chunk.flatten(1)
                    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
                    masks = (chunk - low) / (high - low + 1e-8)
                    outputs = self.model(input_tensor[n : n + 1] * masks[:, None])
                    scores[n, i : i + len(masks)] = torch.stack([target(o) for o in outputs]).float().cpu()
            return torch.softmax(scores, dim=-1).numpy()


METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "scorecam": ChunkedScoreCAM,
    "eigencam": EigenCAM,
}
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM", "eigencam": "EigenCAM"}
METHOD_NOTES = {
    "gradcam": "Grad-CAM: channel weights from the gradients of the class score. Fast.",
    "gradcam++": "Grad-CAM++: higher-order gradient weights; better with several objects. Fast.",
    "scorecam": "Score-CAM: weights from how much each channel, used as a mask, raises the class score. "
                "Gradient-free but slow: one forward pass per channel of the target layer.",
    "eigencam": "EigenCAM: first principal component of the activations. Class-agnostic: the class selector "
                "does not change it.",
}

# Decoding, every CAM and every overlay of this process run on one worker thread, one at a time. On a shared
# server that keeps two sessions from mixing pytorch-grad-cam's hooks on one cached model, bounds memory to one
# image's work however many students upload at once, and keeps the allocations in one thread's malloc arena,
# which malloc_trim empties: measured in-process, ten uploads decoded on ten session threads left 250 MB behind,
# on this worker 6 MB. The models use every core for each CAM anyway.
_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="effnet-cam")


@dataclass(frozen=True)
class CamResult:
    heatmap: np.ndarray  # float32 in [0, 1], (H, W) of the input image
    top5: list[tuple[int, float]]  # (class index, probability), best first
    target_class: int
    method: str
    layer: str


def target_layer_index(spec: ScalingSpec) -> int:
    """Index into ``model.features`` of the last feature map of at least 4x4 (the card's rows map 1:1)."""
    sizes = [row.output_size for row in model_card(spec).stages]
    large = [i for i, size in enumerate(sizes) if size >= MIN_CAM_SIZE]
    return large[-1] if large else 0


def image_size(data: bytes | Image.Image) -> tuple[int, int]:
    """(width, height) of an upload as its file says (its header only), or of an image already decoded."""
    if isinstance(data, Image.Image):
        return data.size
    import io

    from effnet.images import FORMATS

    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:

            orientation = img.getexif().get(0x0112, 1)
            return (img.height, img.width) if orientation in (5, 6, 7, 8) else img.size  # EXIF-rotated as shown
    except Exception as exc:  # any unreadable upload: load_image says why, in its words
        raise ValueError("not an image this lab can read") from exc


def load_image(data: bytes | Image.Image, name: str = "image") -> Image.Image:
    """An upload decoded for CAMs and display (at most ``DISPLAY_SIDE``), on the CAM worker; ``ValueError`` if bad."""
    return _WORKER.submit(decode_image, data, name, DISPLAY_SIDE).result()


def explain(model: nn.Module, spec: ScalingSpec, image: Image.Image | bytes, method: str = "gradcam",
            target_class: int | None = None) -> CamResult:
    """A class activation map of ``image`` for ``target_class`` (default: the top prediction).

    ``image`` is a PIL image or the raw bytes of an uploaded file; undecodable, truncated or
    oversized images raise ``ValueError`` with a message fit to show a user.
    """
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if target_class is not None and not 0 <= target_class < spec.num_classes:
        raise ValueError(f"target_class: must be in 0..{spec.num_classes - 1}, got {target_class}")
    return _WORKER.submit(_explain, model, spec, image, method, target_class).result()


def _explain(model: nn.Module, spec: ScalingSpec, image: Image.Image | bytes, method: str,
             target_class: int | None) -> CamResult:
    img = decode_image(image)
    top5, target, grayscale, index = _cam(model, spec, img, method, target_class)
    heat = Image.fromarray(np.nan_to_num(grayscale.astype(np.float32)), mode="F").resize(img.size, Image.BILINEAR)
    heatmap = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    return CamResult(heatmap, top5, target, method, f"features.{index}")


def _cam(model: nn.Module, spec: ScalingSpec, img: Image.Image, method: str,
         target_class: int | None) -> tuple[list[tuple[int, float]], int, np.ndarray, int]:
    """On the CAM worker: top-5, the explained class, the low-resolution map and the layer index."""
    if model.training:
        model = copy.deepcopy(model).eval()  # the caller's (training) model keeps its mode and state
    device = next(model.parameters()).device
    x = to_model_input(to_uint8_tensor(img).to(device), spec)
    index = target_layer_index(spec)
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1)[0]
    top = probs.topk(min(5, spec.num_classes))
    top5 = [(int(i), float(p)) for p, i in zip(top.values, top.indices, strict=True)]
    target = top5[0][0] if target_class is None else target_class
    with METHODS[method](model=model, target_layers=[model.features[index]]) as cam:
        if isinstance(cam, ChunkedScoreCAM):
            # As many masked copies per forward pass as ~2 GiB of (training-sized) activations allow.
            per_image = max(1, model_card(spec).activation_bytes(1))
            cam.batch_size = int(min(128, max(1, SCORECAM_MEMORY // per_image)))
        grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
    model.zero_grad(set_to_none=True)
    return top5, target, grayscale, index


def overlay(image: Image.Image | bytes, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The heatmap in viridis (colour-blind safe) blended over the image (on the CAM worker)."""
    return _WORKER.submit(_overlay, image, heatmap, alpha).result()


def _overlay(image: Image.Image | bytes, heatmap: np.ndarray, alpha: float) -> Image.Image:
    from matplotlib import colormaps

    img = decode_image(image)
    colours = colormaps["viridis"](heatmap, bytes=True)[..., :3]  # uint8 straight away: no float64 RGBA copy
    blended = Image.blend(img, Image.fromarray(colours).resize(img.size), alpha)
    release_memory()
    return blended


# Small images (CIFAR's 32 px) are shown at least this large, enlarged without blurring.
SHOWN_MIN_SIDE = 256


def for_display(img: Image.Image) -> Image.Image:
    """Enlarge a small image for the projector with nearest-neighbour pixels (no blur that would hide the object)."""
    if max(img.size) >= SHOWN_MIN_SIDE:
        return img
    scale = SHOWN_MIN_SIDE / max(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.NEAREST)


def colour_bar(width: int = 512, height: int = 24) -> Image.Image:
    """The viridis scale the maps use, low evidence on the left, high on the right."""
    from matplotlib import colormaps

    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    return Image.fromarray(colormaps["viridis"](ramp, bytes=True)[..., :3])


def class_names(run_dir: Path, num_classes: int) -> list[str]:
    """A run's class names (stored with its confusion matrix), else 'class i'."""
    names = (runs.read_classes(run_dir) or {}).get("fine") or []
    return names if len(names) == num_classes else [f"class {i}" for i in range(num_classes)]


def default_device() -> str:
    """Where CAMs are computed: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_model(run_dir: Path, device: str = "cpu") -> tuple[nn.Module, ScalingSpec, list[str]]:
    """A run's shown checkpoint (best, else last) as a separate eval-mode model, with its class names."""
    model, spec = runs.load_model(run_dir)
    return model.to(device), spec, class_names(run_dir, spec.num_classes)


def imagenet_model(variant: str, device: str = "cpu") -> tuple[nn.Module, ScalingSpec, list[str]]:
    """torchvision's ImageNet weights for B0-B7 (RuntimeError saying why when they cannot be had)."""
    import torchvision.models as tvm

    from effnet.model import load_pretrained

    spec = ScalingSpec.official(variant, geometry="imagenet", num_classes=1000, normalization="imagenet")
    names = tvm.get_model_weights(f"efficientnet_{variant}").IMAGENET1K_V1.meta["categories"]
    return load_pretrained(spec, device).eval(), spec, list(names)
