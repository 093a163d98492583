"""Class activation maps: where a model looks when it predicts a class.

``explain(model, spec, image)`` preprocesses the image with the spec's one preprocessing function,
runs a method from pytorch-grad-cam on the right layer, and maps the heatmap back onto the whole
input image. Design points:

- Target layer: by default the last feature map that is at least 4x4 (from the spec's model card). The head
  of a paper-geometry model at 32 px is 1x1, which would make every CAM a constant. ``layer_choices`` lists
  the stages a map can be made from (an earlier one gives a finer map); baselines name theirs (``layer3``).
- Faithfulness: ``road`` scores a map with pytorch-grad-cam's ROAD (Rong et al. 2022), combined over the
  percentiles ``ROAD_PERCENTILES``: the pixels the map ranks highest are removed (imputed from their
  neighbours, so no tell-tale holes) and the class probability should fall; the lowest-ranked are removed
  and it should stay. The score is half the difference of the two changes: above 0 the map points at what
  the model uses, around 0 it is no better than chance.
- Sanity check (Adebayo et al. 2018): ``randomised`` is the same architecture with fresh random weights.
  A map that barely changes on it shows the image's edges, not the model's evidence.
- pytorch-grad-cam puts the model into eval mode and hooks it. A model in training mode is never
  touched: ``explain`` then works on a copy. All CAMs of a process run on one worker thread, so two
  app sessions never mix their hooks on a shared (cached) model.
- Score-CAM runs one forward pass per channel of the target layer; ours masks the input channel
  chunk by channel chunk, so memory stays bounded on wide heads (B7's has 2,560 channels).
"""

from __future__ import annotations

import copy
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from torch import nn

from effnet.arch import specs
from effnet.arch.baselines import BaselineSpec
from effnet.arch.preprocess import to_model_input
from effnet.arch.specs import Spec
from effnet.data.images import decode_image, release_memory, to_uint8_tensor
from effnet.training import runs
from effnet.training.devices import check_device

MIN_CAM_SIZE = 4
LAST = "last"  # the default layer: the last stage with a map of at least MIN_CAM_SIZE
LAYER_RULES = {LAST: MIN_CAM_SIZE, "finer": 2 * MIN_CAM_SIZE, "finest": 4 * MIN_CAM_SIZE}  # least side of the map
ROAD_PERCENTILES = (20, 40, 60, 80)
# Uploads are shrunk to this side when decoded: the models see 32-600 px, a projector shows ~1,000.
DISPLAY_SIDE = 1024
SCORECAM_MEMORY = 2 * 1024**3
# What one rerun of a page explains, on a server the whole class shares: a map is one model on one image (the sanity
# check doubles the models), and Score-CAM costs a forward pass per channel. Unbounded, Score-CAM with the sanity
# check over every run and 6 images took 88 s of the server's CPU in one click.
MAX_CAM_IMAGES, MAX_CAM_MAPS, MAX_SCORECAM_MAPS = 6, 24, 8


def cam_budget(models: int, images: int, method: str, sanity: bool) -> tuple[int, int]:
    """(trained models, images) one rerun explains: the first ones that fit the map budget, at least one of each."""
    cap = MAX_SCORECAM_MAPS if method == "scorecam" else MAX_CAM_MAPS
    per_model = 2 if sanity else 1
    kept = max(1, min(models, cap // per_model))
    return kept, max(1, min(images, MAX_CAM_IMAGES, cap // (kept * per_model)))


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
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
}
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM", "eigencam": "EigenCAM",
                "hirescam": "HiResCAM", "layercam": "LayerCAM"}
METHOD_NOTES = {
    "gradcam": "Grad-CAM: channel weights from the gradients of the class score. Fast.",
    "gradcam++": "Grad-CAM++: higher-order gradient weights; better with several objects. Fast.",
    "scorecam": "Score-CAM: weights from how much each channel, used as a mask, raises the class score. "
                "Gradient-free but slow: one forward pass per channel of the target layer.",
    "eigencam": "EigenCAM: first principal component of the activations. Class-agnostic: the class selector "
                "does not change it.",
    "hirescam": "HiResCAM: gradients times activations cell by cell, not averaged per channel: provably shows "
                "what the score used. Fast.",
    "layercam": "LayerCAM: positive gradients weight each cell; sharp on earlier, finer layers. Fast.",
}
ROAD_NOTE = ("Faithfulness (ROAD, -0.5 to 0.5): how much the class probability falls when the pixels this map "
             "ranks highest are removed, against removing the lowest. Above 0: the map shows what the model uses; "
             "near 0: no better than chance.")

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
    road: float | None = None  # faithfulness (see ROAD_NOTE), when asked for


@dataclass(frozen=True)
class Layer:
    module: str  # the module's name in the model ("features.6", "layer3")
    stage: str  # the card's name for it
    size: int  # side of its feature map at the spec's resolution


# Stages that are not a feature map of their own (a norm, an activation, a pool, the classifier).
_NOT_MAPS = {"BatchNorm2d", "ReLU", "Identity", "MaxPool2d", "AdaptiveAvgPool2d", "Linear", "Dropout"}


def layer_choices(spec: Spec) -> list[Layer]:
    """The stages a map can be made from, first to last (from the model card: no model is built)."""
    rows = specs.card(spec).stages
    if isinstance(spec, BaselineSpec):
        return [Layer(r.name, r.name, r.output_size) for r in rows
                if r.operator not in _NOT_MAPS and r.output_size > 1 and r.name != spec.head]
    return [Layer(f"features.{i}", r.name, r.output_size) for i, r in enumerate(rows)]  # rows map 1:1 to features


def target_layer(spec: Spec, layer: str = LAST) -> Layer:
    """The named stage (its module or card name), or one chosen by the size of its map, for any model alike:
    ``LAST``, the last map of at least 4x4; ``finer``, of at least 8x8; ``finest``, of at least 16x16."""
    choices = layer_choices(spec)
    if layer in LAYER_RULES:
        large = [c for c in choices if c.size >= LAYER_RULES[layer]]
        return large[-1] if large else choices[0]
    for c in choices:
        if layer in (c.module, c.stage):
            return c
    raise ValueError(f"layer: {layer!r} is not one of {', '.join(c.module for c in choices)} (or "
                     f"{', '.join(LAYER_RULES)})")


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with fresh random weights (Adebayo et al.'s model-randomisation test), in eval mode."""
    copy_ = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in copy_.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return copy_.eval()


def map_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps: 1 means the same ranking of pixels, 0 unrelated."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:  # a flat map ranks nothing
        return 1.0 if np.ptp(a) == np.ptp(b) else 0.0
    ra = np.argsort(np.argsort(a.ravel())).astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel())).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def image_size(data: bytes | Image.Image, name: str = "image") -> tuple[int, int]:
    """(width, height) of an upload as its file says (its header only), or of an image already decoded."""
    if isinstance(data, Image.Image):
        return data.size

    from effnet.data.images import FORMATS

    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:

            orientation = img.getexif().get(0x0112, 1)
            return (img.height, img.width) if orientation in (5, 6, 7, 8) else img.size  # EXIF-rotated as shown
    except Exception as exc:  # any unreadable upload: load_image says why, in its words
        raise ValueError(f"{name} is not an image this lab can read (PNG, JPEG, WebP, GIF, BMP, TIFF)") from exc


def load_image(data: bytes | Image.Image, name: str = "image") -> Image.Image:
    """An upload decoded for CAMs and display (at most ``DISPLAY_SIDE``), on the CAM worker; ``ValueError`` if bad."""
    return _WORKER.submit(decode_image, data, name, DISPLAY_SIDE).result()


def explain(model: nn.Module, spec: Spec, image: Image.Image | bytes, method: str = "gradcam",
            target_class: int | None = None, layer: str = LAST, road: bool = False) -> CamResult:
    """A class activation map of ``image`` for ``target_class`` (default: the top prediction), made from
    ``layer`` (``layer_choices``), with its ROAD faithfulness when ``road``.

    ``image`` is a PIL image or the raw bytes of an uploaded file; undecodable, truncated or
    oversized images raise ``ValueError`` with a message fit to show a user.
    """
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if target_class is not None and not 0 <= target_class < spec.num_classes:
        raise ValueError(f"target_class: must be in 0..{spec.num_classes - 1}, got {target_class}")
    chosen = target_layer(spec, layer)
    return _WORKER.submit(_explain, model, spec, image, method, target_class, chosen, road).result()


def _explain(model: nn.Module, spec: Spec, image: Image.Image | bytes, method: str,
             target_class: int | None, layer: Layer, road: bool) -> CamResult:
    img = decode_image(image)
    top5, target, grayscale, score = _cam(model, spec, img, method, target_class, layer, road)
    heat = Image.fromarray(np.nan_to_num(grayscale.astype(np.float32)), mode="F").resize(img.size, Image.BILINEAR)
    heatmap = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    return CamResult(heatmap, top5, target, method, layer.module, score)


def _cam(model: nn.Module, spec: Spec, img: Image.Image, method: str, target_class: int | None,
         layer: Layer, road: bool) -> tuple[list[tuple[int, float]], int, np.ndarray, float | None]:
    """On the CAM worker: top-5, the explained class, the map at the model's input size and its ROAD score."""
    if model.training:
        model = copy.deepcopy(model).eval()  # the caller's (training) model keeps its mode and state
    device = next(model.parameters()).device
    x = to_model_input(to_uint8_tensor(img).to(device), spec)
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1)[0]
    top = probs.topk(min(5, spec.num_classes))
    top5 = [(int(i), float(p)) for p, i in zip(top.values, top.indices, strict=True)]
    target = top5[0][0] if target_class is None else target_class
    with METHODS[method](model=model, target_layers=[model.get_submodule(layer.module)]) as cam:
        if isinstance(cam, ChunkedScoreCAM):
            # As many masked copies per forward pass as ~2 GiB of (training-sized) activations allow.
            per_image = max(1, specs.card(spec).activation_bytes(1))
            cam.batch_size = int(min(128, max(1, SCORECAM_MEMORY // per_image)))
        grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
    model.zero_grad(set_to_none=True)
    score = road_score(model, x, grayscale, target) if road else None
    return top5, target, grayscale, score


def road_score(model: nn.Module, x: torch.Tensor, grayscale: np.ndarray, target: int) -> float:
    """ROAD combined over ``ROAD_PERCENTILES`` for one map of one input (see the module's docstring)."""
    from pytorch_grad_cam.metrics.road import ROADCombined

    metric = ROADCombined(percentiles=list(ROAD_PERCENTILES))
    with torch.random.fork_rng(devices=[]):  # the imputer adds noise: the same map gets the same score
        torch.manual_seed(0)
        np_state = np.random.get_state()
        np.random.seed(0)
        try:
            scores = metric(x, grayscale[None].astype(np.float32), [ClassifierOutputSoftmaxTarget(target)], model)
        finally:
            np.random.set_state(np_state)
    return float(np.asarray(scores).ravel()[0])


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


def run_model(run_dir: Path, device: str = "cpu") -> tuple[nn.Module, Spec, list[str]]:
    """A run's shown checkpoint (best, else last) as a separate eval-mode model, with its class names."""
    model, spec = runs.load_model(run_dir)
    return model.to(device), spec, class_names(run_dir, spec.num_classes)


def imagenet_model(variant: str, device: str = "cpu") -> tuple[nn.Module, Spec, list[str]]:
    """torchvision's ImageNet weights for B0-B7 and V2-S/M/L (RuntimeError saying why when they cannot be had)."""
    import torchvision.models as tvm

    from effnet.arch.model import load_pretrained, torchvision_name
    from effnet.arch.scaling import ScalingSpec

    spec = ScalingSpec.official(variant, geometry="imagenet", num_classes=1000, normalization="imagenet")
    names = tvm.get_model_weights(torchvision_name(spec)).IMAGENET1K_V1.meta["categories"]
    return load_pretrained(spec, device).eval(), spec, list(names)


# ----------------------------------------------------------------------------- the command line
MAX_IMAGE_BYTES = 64 * 1024**2


def _overlay_name(index: int, image: Path, method: str) -> str:
    from effnet.base.text import slug

    return f"{index:02d}-{slug(image.stem) or 'image'}-{method}.png"


def cam_report(run_dir: Path, images: list[Path], method: str = "gradcam", layer: str = LAST,
               out: Path | None = None, sanity: bool = False, device: str = "cpu") -> list[dict[str, object]]:
    """Per image: what the run predicts, its top 5, the map's ROAD score, and (with ``out``) the overlay written
    there as PNG; with ``sanity`` also the map of the randomised model and how alike the two are."""
    from effnet.base import files

    model, spec, names = run_model(run_dir, device)
    random_model = randomised(model) if sanity else None
    report = []
    for index, path in enumerate(images):
        data = files.read_file(path, MAX_IMAGE_BYTES)
        result = explain(model, spec, data, method, layer=layer, road=True)
        row: dict[str, object] = {
            "image": str(path), "predicted": names[result.top5[0][0]], "score": result.top5[0][1],
            "explained": names[result.target_class],
            "top5": [{"class": names[i], "probability": p} for i, p in result.top5],
            "road": result.road, "method": method, "layer": result.layer}
        if random_model is not None:
            other = explain(random_model, spec, data, method, target_class=result.target_class, layer=layer,
                            road=True)
            row["randomised"] = {"explained": names[other.target_class], "road": other.road,  # the same class
                                 "similarity": map_similarity(result.heatmap, other.heatmap)}
        if out is not None:
            target = out / _overlay_name(index, path, method)
            buf = io.BytesIO()
            overlay(data, result.heatmap).save(buf, format="PNG")
            files.atomic_write_bytes(target, buf.getvalue())
            row["overlay"] = str(target)
        report.append(row)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m effnet.cam RUN_DIR IMAGE [IMAGE...]``: class activation maps of a trained run."""
    import argparse
    import json
    import sys

    from effnet.training.checkpoint import CheckpointError

    p = argparse.ArgumentParser(prog="python -m effnet.cam", description=main.__doc__)
    p.add_argument("run_dir", type=Path, help="a run folder (its best checkpoint, else its last)")
    p.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, WebP, GIF, BMP, TIFF)")
    p.add_argument("--method", choices=list(METHODS), default="gradcam")
    p.add_argument("--layer", default=LAST, help="a stage's module name (features.4, layer3), or last (the default: "
                                                 "the last map of at least 4x4), finer (8x8) or finest (16x16)")
    p.add_argument("--out", type=Path, help="folder for the overlays (PNG, one per image)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    p.add_argument("--sanity", action="store_true", help="also map each image with randomised weights")
    p.add_argument("--device", default=default_device())
    args = p.parse_args(argv)
    try:
        check_device(args.device)  # before anything is written
        if args.out is not None:
            if args.out.is_symlink() or (args.out.exists() and not args.out.is_dir()):
                raise ValueError(f"--out: {args.out} is not a folder")
            args.out.mkdir(parents=True, exist_ok=True)
        report = cam_report(args.run_dir, args.images, args.method, args.layer, args.out, args.sanity, args.device)
    except (ValueError, OSError, CheckpointError, runs.Damaged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for row in report:
            sanity = (f", randomised-weights map alike {row['randomised']['similarity']:.2f}"
                      if "randomised" in row else "")
            print(f"{row['image']}: {row['predicted']} ({row['score']:.1%}), ROAD {row['road']:+.3f}{sanity}"
                  + (f" -> {row['overlay']}" if "overlay" in row else ""))
    return 0

