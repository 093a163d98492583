"""The study's comparisons: conventional networks through the lab's machinery, Figure 1, CAMs you can check."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from conftest import built_once, cli, shared
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from effnet import ScalingSpec, build_model
from effnet.analysis.cam import LAST, explain, layer_choices, randomised, target_layer
from effnet.arch import baselines, specs
from effnet.arch.baselines import BaselineSpec
from effnet.arch.zoo import EFFICIENTNET, imagenet_models
from effnet.training import runs
from effnet.training.config import TrainConfig


def adapted_reference(model: str, num_classes: int) -> nn.Module:
    """The cifar adaptation written out again here, independently of effnet.baselines."""
    net = getattr(tvm, model)(num_classes=num_classes)
    if model.startswith("resnet"):
        net.conv1, net.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    elif model == "densenet121":
        net.features.conv0, net.features.pool0 = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    else:
        net.features[0][0].stride = (1, 1)
    return net


@pytest.mark.parametrize("model, geometry", [("resnet18", "cifar"), ("mobilenet_v2", "cifar"),
                                             ("densenet121", "cifar"), ("resnet50", "imagenet")])
def test_a_baseline_card_counts_what_torchvision_builds(model, geometry, tmp_path, monkeypatch):
    """The shipped cards (these specs are among them) against torchvision's own model, counted here."""
    monkeypatch.setenv("EFFNET_CACHE", str(tmp_path))
    spec = BaselineSpec(model=model, geometry=geometry, num_classes=100)
    assert baselines.is_counted(spec)  # shipped: the explorer shows it at once
    card = specs.card(spec)
    reference = adapted_reference(model, 100) if geometry == "cifar" else getattr(tvm, model)(num_classes=100)
    assert card.params == sum(p.numel() for p in reference.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        reference.eval()(torch.zeros(1, 3, spec.resolution, spec.resolution))
    assert card.macs == counter.get_total_flops() // 2
    assert not (tmp_path / "baseline-cards.json").exists()  # nothing counted: it was shipped
    assert build_model(spec).state_dict().keys() == reference.state_dict().keys()


def test_a_card_not_shipped_is_counted_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNET_CACHE", str(tmp_path))
    spec = BaselineSpec(model="resnet18", geometry="cifar", num_classes=10)
    assert not baselines.is_counted(spec)
    card = specs.card(spec)
    assert card.params == sum(p.numel() for p in adapted_reference("resnet18", 10).parameters())
    assert (tmp_path / "baseline-cards.json").is_file() and baselines.is_counted(spec)


def test_the_baseline_card_shows_real_shapes_never_zeros():
    """ResNet-18's cifar stem really is 3x3, stride 1, 3 -> 64; a classifier has no kernel (None, never 0); its
    final map is layer4's 4x4, not the classifier's 1; no phi=0 model, so no FLOPs ratio."""
    card = specs.card(BaselineSpec(model="resnet18", geometry="cifar", num_classes=100))
    rows = {r.name: r for r in card.stages}
    conv1, layer2, fc = rows["conv1"], rows["layer2"], rows["fc"]
    assert (conv1.kernel, conv1.stride, conv1.in_channels, conv1.out_channels) == (3, 1, 3, 64)
    assert (layer2.kernel, layer2.stride, layer2.in_channels, layer2.out_channels, layer2.repeats) == (3, 2, 64, 128, 2)
    assert (fc.kernel, fc.stride, fc.in_channels, fc.out_channels) == (None, None, 512, 100)
    assert card.final_map == 4 and card.flops_ratio is None
    dense = {r.name: r for r in specs.card(BaselineSpec(model="densenet121", geometry="imagenet")).stages}
    assert dense["features.denseblock3"].repeats == 24 and dense["features.transition1"].repeats == 1


@pytest.mark.slow
def test_the_shipped_cards_equal_a_fresh_count():
    shipped = json.loads(baselines.SHIPPED.read_text())
    for spec in baselines.shipped_specs():
        assert shipped[baselines._key(spec)] == baselines._count(spec), spec


def test_card_cli_prints_a_baselines_params_and_macs():
    done = cli("effnet", "card", "--model", "resnet18", "--geometry", "cifar", "--num-classes", "100", "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["params"] == sum(p.numel() for p in adapted_reference("resnet18", 100).parameters())
    assert printed["macs"] > 0.5e9  # 32 px without the stem's downsampling: ~0.56 G
    refused = cli("effnet", "card", "--model", "resnet18", "--phi", "1")
    assert refused.returncode == 2 and "--phi describes an EfficientNet" in refused.stderr


def test_imagenet_weights_need_the_imagenet_geometry():
    config = TrainConfig(spec=BaselineSpec(model="resnet18", geometry="cifar", normalization="imagenet"),
                         pretrained=True)
    with pytest.raises(ValueError, match="imagenet geometry"):
        config.validate()


def test_a_baselines_spec_round_trips_through_its_json_form():
    spec = BaselineSpec(model="densenet121", geometry="imagenet", num_classes=10, normalization="imagenet")
    assert specs.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="model"):
        specs.from_dict({"model": "vgg16"})


CANVAS = 16  # the digit (8x8) lands anywhere on a 16x16 noisy canvas
HELD_OUT = 40  # digits never trained on, for the CAM checks


def placed_digits(seed: int, held_out: bool) -> tuple[np.ndarray, np.ndarray]:
    """Real digits (scikit-learn's 8x8) at random places on a noisy canvas: the last ``HELD_OUT`` of them, or
    the rest (for training)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pick = np.arange(len(d.target))[-HELD_OUT:] if held_out else np.arange(len(d.target) - HELD_OUT)
    rng = np.random.default_rng(seed)
    canvas = rng.integers(0, 60, (len(pick), CANVAS, CANVAS)).astype(np.float32)
    for k, i in enumerate(pick):
        y, x = rng.integers(0, CANVAS - 8, 2)
        canvas[k, y : y + 8, x : x + 8] = np.maximum(canvas[k, y : y + 8, x : x + 8], d.images[i] * 16)
    return np.repeat(canvas.clip(0, 255).astype(np.uint8)[..., None], 3, axis=3), d.target[pick]


def write_placed_digits(root: Path) -> Path:
    images, labels = placed_digits(seed=0, held_out=False)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        (root / f"digit-{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"digit-{label}" / f"{i}.png")
    return root


@pytest.fixture(scope="session")
@shared
def resnet_digits(tmp_path_factory) -> Path:
    """ResNet-18 (cifar stem, 16 px) trained on placed digits through the lab's CLI."""
    def build(root: Path) -> None:
        done = cli("effnet.train", "--model", "resnet18", "--base-resolution", str(CANVAS), "--dataset", "folder",
                   "--data-dir", str(write_placed_digits(root / "digits")), "--epochs", "4", "--batch-size", "32",
                   "--lr", "0.05", "--val-size", "200", "--augment", "none", "--device", "cpu", "--out",
                   str(root / "r18"))
        assert done.returncode == 0, done.stderr

    return built_once(tmp_path_factory, "resnet-digits", build)


@pytest.mark.slow
def test_a_baseline_trains_on_real_digits_well_above_chance(resnet_digits):
    rows = runs.load_metrics(resnet_digits / "r18")
    assert rows[-1]["test_top1"] > 50, rows  # chance is 10%
    spec, _ = runs.load_config(resnet_digits / "r18")
    assert spec == BaselineSpec(model="resnet18", base_resolution=CANVAS, num_classes=10)


@pytest.mark.slow
def test_the_cam_cli_writes_overlays_and_json(resnet_digits, tmp_path):
    held_out, _ = placed_digits(seed=1, held_out=True)
    images = []
    for i in (0, 1):
        Image.fromarray(held_out[i]).save(tmp_path / f"held-out-{i}.png")
        images.append(tmp_path / f"held-out-{i}.png")
    done = cli("effnet.cam", str(resnet_digits / "r18"), *map(str, images), "--method", "hirescam", "--out",
               str(tmp_path / "cams"), "--json", "--sanity")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [r["image"] for r in report] == [str(p) for p in images]
    for row in report:
        assert {"image", "predicted", "score", "top5", "road"} <= row.keys()
        assert row["predicted"].startswith("digit-") and row["top5"][0]["class"] == row["predicted"]
        # The randomised copy explains the class the trained model explained (like for like), not its own top class.
        assert row["explained"] == row["predicted"] == row["randomised"]["explained"]
        assert 0 < row["score"] <= 1 and -0.5 <= row["road"] <= 0.5
        with Image.open(row["overlay"]) as img:
            assert img.format == "PNG" and img.size == Image.open(images[0]).size
    bad = cli("effnet.cam", str(resnet_digits / "r18"), str(images[0]), "--layer", "nope")
    assert bad.returncode == 2 and "layer: 'nope' is not one of" in bad.stderr


@pytest.mark.slow
def test_a_trained_models_grad_cam_is_more_faithful_than_its_randomised_copys(resnet_digits):
    model, spec = runs.load_model(resnet_digits / "r18")
    images, labels = placed_digits(seed=1, held_out=True)
    trained = [explain(model, spec, Image.fromarray(img), "gradcam", road=True) for img in images]
    accuracy = np.mean([r.top5[0][0] == label for r, label in zip(trained, labels, strict=True)])
    assert accuracy >= 0.5, "the model did not learn the digits, so the comparison would mean nothing"
    noise = randomised(model)
    shuffled = [explain(noise, spec, Image.fromarray(img), "gradcam", road=True) for img in images]
    ours, theirs = np.mean([r.road for r in trained]), np.mean([r.road for r in shuffled])
    assert ours > theirs + 0.05, (ours, theirs)
    assert all(math.isfinite(r.road) for r in trained + shuffled)


def test_an_earlier_layer_gives_a_finer_map():
    spec = BaselineSpec(model="resnet18", num_classes=10)
    names = [c.module for c in layer_choices(spec)]
    assert names == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert target_layer(spec, LAST).module == "layer4" and target_layer(spec, "layer2").size == 16
    eff = ScalingSpec.official("b0")
    assert target_layer(eff, "stage 4").module == "features.4"
    model = build_model(spec).eval()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    coarse, fine = explain(model, spec, img, layer="layer4"), explain(model, spec, img, layer="layer2")
    assert coarse.layer == "layer4" and fine.layer == "layer2"
    assert not np.allclose(coarse.heatmap, fine.heatmap)


def test_figure1_comes_from_torchvisions_metadata():
    models = {m.name: m for m in imagenet_models()}
    weights = tvm.get_model_weights("resnet50").IMAGENET1K_V1
    assert models["resnet50"].top1 == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert models["resnet50"].params == weights.meta["num_params"]
    effnets = [m for m in imagenet_models() if m.family == EFFICIENTNET]
    assert [m.name for m in effnets] == [f"efficientnet_b{i}" for i in range(8)]  # sorted by params = B0..B7
    assert {"ResNet", "DenseNet", "MobileNet"} <= {m.family for m in imagenet_models()}


@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v2"])
def test_pruning_a_baseline_keeps_its_classifier_and_shrinks_the_rest(model):
    from effnet.compression.compress import prune

    spec = BaselineSpec(model=model, num_classes=10, base_resolution=16)
    net = build_model(spec).eval()
    example = torch.zeros(1, 3, 16, 16)
    pruned = prune(net, 0.3, example)
    assert pruned(example).shape == (1, 10)
    assert sum(p.numel() for p in pruned.parameters()) < 0.7 * sum(p.numel() for p in net.parameters())
    assert [m.out_features for m in pruned.modules() if isinstance(m, nn.Linear)][-1] == 10
