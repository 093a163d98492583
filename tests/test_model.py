"""The model against torchvision (weights and logits) and the card against real counts."""

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from effnet import ScalingSpec, build_model, model_card
from effnet.arch.preprocess import to_model_input

VARIANTS = [f"b{i}" for i in range(8)]
# B4-B7 take seconds each to build and trace: the full suite checks them, the fast tier B0-B3.
TIERED = [pytest.param(v, marks=pytest.mark.slow) if v >= "b4" else v for v in VARIANTS]
PAPER_GMACS = [0.386, 0.687, 0.994, 1.827, 4.394, 10.266, 19.068, 37.746]


def traced_macs(spec: ScalingSpec) -> int:
    """Multiply-adds by running the model on the meta device under FlopCounterMode (2 FLOPs each)."""
    with torch.device("meta"):
        model = build_model(spec).eval()
        x = torch.empty(1, 3, spec.resolution, spec.resolution)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("variant", TIERED)
def test_torchvision_weights_load_strictly_and_give_the_same_logits(variant):
    torch.manual_seed(0)
    spec = ScalingSpec.official(variant, geometry="imagenet", num_classes=1000)
    ours = build_model(spec).eval()
    theirs = getattr(torchvision.models, f"efficientnet_{variant}")().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    assert diff < 1e-4
    bn = ours.features[0][1]
    assert (bn.eps, bn.momentum) == ((1e-3, 0.01) if variant in ("b5", "b6", "b7") else (1e-5, 0.1))


@pytest.mark.parametrize("variant, gmacs", list(zip(VARIANTS, PAPER_GMACS, strict=True)))
def test_card_matches_torchvision_reference_numbers(variant, gmacs):
    card = model_card(ScalingSpec.official(variant, geometry="imagenet", num_classes=1000))
    tv_params = {"b0": 5_288_548, "b7": 66_347_960}
    assert round(card.macs / 1e9, 3) == gmacs
    if variant in tv_params:
        assert card.params == tv_params[variant]


CUSTOM_SPECS = [
    ScalingSpec.official("b0"),
    ScalingSpec.official("b3"),
    ScalingSpec.official("b7"),
    ScalingSpec.official("b4", geometry="imagenet", num_classes=10),
    ScalingSpec(phi=1.5, geometry="cifar"),
    ScalingSpec(phi=-3, geometry="cifar"),
    ScalingSpec(phi=-2.2, alpha=1.4, beta=1.05, gamma=1.3, geometry="imagenet", num_classes=7),
    ScalingSpec(phi=2, beta=1.17, geometry="cifar", output_stride=16, base_resolution=17),
    ScalingSpec(phi=3, scaling="width"),
    ScalingSpec(phi=2, scaling="resolution", geometry="imagenet", output_stride=8, base_resolution=16),
]


@pytest.mark.parametrize("spec", [pytest.param(s, marks=pytest.mark.slow) if s.name in ("B7", "B4") else s
                                  for s in CUSTOM_SPECS], ids=lambda s: f"{s.name}-{s.geometry}")
def test_card_matches_flop_counter_and_parameter_count(spec):
    card = model_card(spec)
    assert card.params == sum(p.numel() for p in build_model(spec).parameters())
    assert card.macs == pytest.approx(traced_macs(spec), rel=0.005)


@pytest.mark.parametrize("variant", TIERED)
def test_card_matches_flop_counter_for_official_imagenet(variant):
    spec = ScalingSpec.official(variant, geometry="imagenet", num_classes=1000)
    assert model_card(spec).macs == pytest.approx(traced_macs(spec), rel=0.005)


@pytest.mark.parametrize("spec", [pytest.param(s, marks=pytest.mark.slow) if s.name == "B7" else s
                                  for s in CUSTOM_SPECS[:3] + CUSTOM_SPECS[5:7]], ids=lambda s: s.name)
def test_activation_estimate_matches_what_autograd_saves(spec):
    model = build_model(spec).train()
    params = {p.data_ptr() for p in model.parameters()}
    saved: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            saved[(t.data_ptr(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(2, 3, spec.resolution, spec.resolution))
    assert model_card(spec).activation_bytes(2) == pytest.approx(sum(saved.values()), rel=0.05)


def test_stage_table_for_b0_at_224_is_the_papers_table_1():
    card = model_card(ScalingSpec.official("b0", geometry="imagenet", num_classes=1000))
    rows = [(r.operator, r.kernel, r.stride, r.out_channels, r.repeats, r.output_size) for r in card.stages]
    assert rows == [
        ("Conv3x3", 3, 2, 32, 1, 112),
        ("MBConv1", 3, 1, 16, 1, 112),
        ("MBConv6", 3, 2, 24, 2, 56),
        ("MBConv6", 5, 2, 40, 2, 28),
        ("MBConv6", 3, 2, 80, 3, 14),
        ("MBConv6", 5, 1, 112, 3, 14),
        ("MBConv6", 5, 2, 192, 4, 7),
        ("MBConv6", 3, 1, 320, 1, 7),
        ("Conv1x1, pool, FC", 1, 1, 1280, 1, 7),
    ]
    assert card.params == 5_288_548


def test_b0_with_100_classes_has_the_reference_parameter_count():
    assert model_card(ScalingSpec.official("b0", num_classes=100)).params == 4_135_648


@pytest.mark.parametrize("geometry", ["cifar", "imagenet"])
@pytest.mark.parametrize("resolution", [16, 17, 32, 33, 64])
def test_every_resolution_from_16px_runs_and_final_map_matches_the_card(geometry, resolution):
    spec = ScalingSpec(phi=-3, geometry=geometry, base_resolution=resolution, gamma=1.0)
    model = build_model(spec).eval()
    with torch.no_grad():
        fmap = model.features(torch.randn(1, 3, resolution, resolution))
        logits = model(torch.randn(1, 3, resolution, resolution))
    assert fmap.shape[-1] == model_card(spec).final_map
    assert logits.shape == (1, spec.num_classes)


def test_cifar_geometry_keeps_4x4_maps_at_32px_and_paper_geometry_collapses():
    cifar = ScalingSpec.official("b0", geometry="cifar")
    paper_at_32 = ScalingSpec.official("b0", geometry="imagenet", base_resolution=32)
    assert model_card(cifar).final_map == 4
    assert model_card(paper_at_32).final_map == 1
    with torch.no_grad():
        fmap = build_model(cifar).eval().features(torch.randn(1, 3, 32, 32))
    assert fmap.shape[-2:] == (4, 4)


def test_stochastic_depth_schedule_is_linear_from_zero_to_0_2():
    model = build_model(ScalingSpec.official("b0"))
    drops = [m.drop_path for m in model.modules() if hasattr(m, "drop_path")]
    assert drops[0] == 0 and max(drops) < 0.2 and drops == sorted(drops)
    assert drops[-1] == pytest.approx(0.2 * 15 / 16)


def test_preprocessing_resizes_to_the_spec_and_normalises_by_its_statistics():
    spec = ScalingSpec.official("b3")  # 43 px, CIFAR statistics
    gray = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    x = to_model_input(gray, spec)
    assert x.shape == (2, 3, 43, 43)
    assert x[0, 0, 0, 0].item() == pytest.approx((128 / 255 - 0.5071) / 0.2673, abs=1e-4)
    imagenet = ScalingSpec.official("b0", geometry="imagenet", normalization="imagenet")
    y = to_model_input(gray, imagenet)
    assert y.shape[-1] == 224 and y[0, 0, 0, 0].item() == pytest.approx((128 / 255 - 0.485) / 0.229, abs=1e-4)
    with pytest.raises(ValueError, match="images"):
        to_model_input(torch.zeros(3, 32, 32, dtype=torch.uint8), spec)


def test_the_measure_estimate_follows_what_measure_speed_does():
    """The explorer's spinner promises this estimate (classroom item 14: "a few seconds" took 22 s): it grows with
    the model and the batch, counts the first imports, and a tiny model stops at its repetition caps."""
    from effnet.training.measure import FIRST_IMPORT_S, measure_estimate_s

    tiny, b0, b4 = ScalingSpec(phi=-4), ScalingSpec.official("b0"), ScalingSpec.official("b4", geometry="imagenet")
    assert measure_estimate_s(tiny, 4, cold=False) < 2 < measure_estimate_s(b0, 16, cold=False)
    assert measure_estimate_s(b0, 16, cold=False) < measure_estimate_s(b0, 64, cold=False)
    assert measure_estimate_s(b0, 16, cold=False) < measure_estimate_s(b4, 16, cold=False)
    assert measure_estimate_s(b0, 16, cold=True) == measure_estimate_s(b0, 16, cold=False) + FIRST_IMPORT_S
