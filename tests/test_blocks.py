"""Blocks you can change: ECA, CBAM, no attention, SE ratios, Fused-MBConv and EfficientNetV2-S/M/L.

Each kind is checked against something independent: torchvision's V2 (weights and logits) and its weights
metadata, FlopCounterMode and the parameter count for the card, small reference implementations of ECA and
CBAM written here from the papers, and a run folder and bundle written by the lab before the block had fields.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from effnet import ScalingSpec, build_model, model_card
from effnet.arch import specs
from effnet.arch.card import at_equal_macs
from effnet.arch.model import CBAM, ECA, torchvision_name
from effnet.experiments.bundle import import_bundle
from effnet.training import runs
from effnet.training.checkpoint import load_checkpoint

DATA = Path(__file__).parent / "data"
# torchvision's weights metadata (params, GFLOPS, evaluation size): the card must say the same.
V2_METADATA = {"v2-s": (21_458_488, 8.366, 384), "v2-m": (54_139_356, 24.582, 480), "v2-l": (118_515_272, 56.08, 480)}
# V2-M and V2-L take seconds to build twice on two cores: the full suite checks them, the fast tier V2-S.
V2_TIERED = [pytest.param(v, marks=pytest.mark.slow) if v != "v2-s" else v for v in V2_METADATA]


@pytest.mark.parametrize("variant", V2_TIERED)
def test_v2_loads_torchvisions_weights_strictly_and_gives_the_same_logits(variant):
    torch.manual_seed(0)
    spec = ScalingSpec.official(variant, geometry="imagenet", num_classes=1000)
    ours = build_model(spec).eval()
    theirs = getattr(torchvision.models, torchvision_name(spec))().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 3, 64, 64)  # fully convolutional: a small input checks every layer
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() < 1e-4
    assert (ours.features[0][1].eps, ours.features[0][1].momentum) == (1e-3, 0.1)


@pytest.mark.parametrize("variant", list(V2_METADATA))
def test_v2_card_equals_torchvisions_weights_metadata(variant):
    params, gflops, size = V2_METADATA[variant]
    card = model_card(ScalingSpec.official(variant, geometry="imagenet", num_classes=1000))
    assert card.spec.resolution == size
    assert card.params == params
    assert round(card.macs / 1e9, 3) == pytest.approx(gflops, abs=1e-3)
    # The cifar geometry: the released resolution ratio at 32 px and B0-B7's output-stride rule (4x4 final maps).
    cifar = model_card(ScalingSpec.official(variant))
    assert cifar.spec.resolution == round(32 * size / 224) and cifar.final_map == math.ceil(cifar.spec.resolution / 8)
    # A V2 is not on B0's line: its reference is B0 as released, whatever blocks the V2 has (one per stage here).
    n = len(cifar.spec.stages)
    mixed = ScalingSpec.official(variant, attention=",".join(["none"] * 3 + ["eca"] * (n - 3)))
    assert model_card(mixed).flops_ratio == model_card(mixed).macs / model_card(ScalingSpec.official("b0")).macs


BLOCK_SPECS = [
    dict(attention="eca"),
    dict(attention="cbam"),
    dict(attention="none"),
    dict(se_ratio=0.5),
    dict(attention="cbam", se_ratio=0.125),
    dict(fused_stages=3),
    dict(fused_stages=7, attention="none"),
    dict(attention="se,eca,cbam,none,se,eca,cbam"),
    dict(attention="none,none,eca,eca,cbam,cbam,se", fused_stages=2),
]


@pytest.mark.parametrize("variant, block", [("b0", b) for b in BLOCK_SPECS] + [("v2-s", dict(attention="eca"))],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_card_counts_every_block_kind_exactly(variant, block):
    spec = ScalingSpec.official(variant, **block)
    model = build_model(spec, "meta").eval()  # shapes only: counting needs no real weights
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, 3, spec.resolution, spec.resolution, device="meta"))
    card = model_card(spec)
    assert card.params == sum(p.numel() for p in model.parameters())
    assert card.macs == counter.get_total_flops() // 2


def test_b0_with_each_attention_differs_where_it_should():
    cards = {a: model_card(ScalingSpec.official("b0", attention=a)) for a in ("se", "eca", "cbam", "none")}
    # ECA has a handful of weights per block where SE has two bottleneck convs; CBAM adds a 7x7 conv to SE's MLP.
    assert cards["none"].params < cards["eca"].params < cards["se"].params < cards["cbam"].params
    assert cards["eca"].params - cards["none"].params == sum(
        b.eca_kernel for st in cards["eca"].spec.stages for b in st.blocks)
    assert cards["cbam"].params - cards["se"].params == 98 * 16  # 2 x 7 x 7 weights in each of B0's 16 blocks
    assert [r.operator for r in cards["eca"].stages][1:3] == ["MBConv1 + ECA", "MBConv6 + ECA"]
    assert ScalingSpec.official("b0", attention="eca").name == "B0 · ECA"
    assert ScalingSpec.official("b0").name == "B0"


def test_eca_kernel_follows_the_papers_rule():
    from effnet.arch.scaling import Block

    # t = int((log2 C + 1) / 2), made odd: the paper's Table (C=64 -> 3, 256 and 1024 -> 5, 2048 -> 7).
    kernels = {c: Block(c, c, c, 1, 3, 1).eca_kernel for c in (16, 64, 96, 256, 512, 1024, 2048)}
    assert kernels == {16: 3, 64: 3, 96: 3, 256: 5, 512: 5, 1024: 5, 2048: 7}


def reference_eca(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ECA written out: per sample, pool every channel, then a zero-padded 1-D filter across the channel means."""
    n, c = x.shape[:2]
    k = weight.numel()
    means = x.mean(dim=(2, 3))
    padded = torch.cat([torch.zeros(n, k // 2), means, torch.zeros(n, k // 2)], dim=1)
    gate = torch.stack([(padded[:, i:i + k] * weight).sum(1) for i in range(c)], dim=1)
    return x * torch.sigmoid(gate)[:, :, None, None]


def reference_cbam(x: torch.Tensor, module: CBAM) -> torch.Tensor:
    """CBAM written out with explicit matrix products and a loop-free unfold for the 7x7 spatial conv."""
    w1, b1 = module.fc1.weight.flatten(1), module.fc1.bias
    w2, b2 = module.fc2.weight.flatten(1), module.fc2.bias

    def mlp(v: torch.Tensor) -> torch.Tensor:
        h = v @ w1.T + b1
        return (h * torch.sigmoid(h)) @ w2.T + b2

    avg, mx = x.flatten(2).mean(2), x.flatten(2).max(2).values
    x = x * torch.sigmoid(mlp(avg) + mlp(mx))[:, :, None, None]
    maps = torch.stack([x.mean(1), x.max(1).values], dim=1)  # (N, 2, H, W)
    n, _, h, w = maps.shape
    cols = nn.functional.unfold(maps, 7, padding=3)  # (N, 2*49, H*W)
    spatial = (module.spatial.weight.flatten() @ cols).reshape(n, 1, h, w)
    return x * torch.sigmoid(spatial)


def test_eca_and_cbam_match_independent_references():
    torch.manual_seed(1)
    x = torch.randn(3, 40, 6, 5)
    eca = ECA(kernel=5)
    nn.init.normal_(eca.conv.weight)
    with torch.no_grad():
        assert torch.allclose(eca(x), reference_eca(x, eca.conv.weight.flatten()), atol=1e-5)
        cbam = CBAM(40, 10)
        for p in cbam.parameters():
            nn.init.normal_(p, std=0.3)
        assert torch.allclose(cbam(x), reference_cbam(x, cbam), atol=1e-5)


def test_fused_blocks_are_torchvisions_fused_mbconv():
    """A B0 with its first three stages fused is built of the same layers as torchvision's FusedMBConv."""
    from torchvision.models.efficientnet import FusedMBConv, FusedMBConvConfig

    spec = ScalingSpec.official("b0", fused_stages=3)
    ours = build_model(spec).eval()
    for stage, index in ((spec.stages[0], 1), (spec.stages[2], 3)):  # expansion 1 (one conv) and 6
        cfg = FusedMBConvConfig(stage.expand, stage.kernel, stage.stride, stage.in_channels, stage.out_channels, 1)
        theirs = FusedMBConv(cfg, 0.0, nn.BatchNorm2d).eval()
        block = ours.features[index][0]
        block.load_state_dict(theirs.state_dict(), strict=True)
        x = torch.randn(2, stage.in_channels, 12, 12)
        with torch.no_grad():
            assert torch.allclose(block(x), theirs(x), atol=1e-5)


@pytest.mark.parametrize("fields, message", [
    (dict(attention="sk"), "attention: 'sk' is not one of"),
    (dict(attention="se,eca"), "one per stage (7 here"),
    (dict(se_ratio=0.0), "se_ratio: must be in (0, 1]"),
    (dict(se_ratio=float("nan")), "se_ratio: must be finite"),
    (dict(fused_stages=8), "fused_stages: must be 0 to 7"),
    (dict(fused_stages=True), "fused_stages: expected a whole number"),
    (dict(attention="eca,se,se,se,se,se,se", fused_stages=1), "carries no attention"),
])
def test_bad_block_fields_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError) as info:
        ScalingSpec.official("b0", **fields)
    assert message in str(info.value)


def test_equal_models_are_equal_specs_and_the_paper_block_is_the_default():
    b0 = ScalingSpec.official("b0")
    assert ScalingSpec.official("b0", fused_stages=0, attention="se,se,se,se,se,se,se") == b0
    assert ScalingSpec.official("v2-s", fused_stages=3) == ScalingSpec.official("v2-s")
    # What the explorer's per-stage boxes make of an unchanged V2 is V2 (its fused stages carry none anyway).
    assert ScalingSpec.official("v2-s", attention="none,none,none,se,se,se") == ScalingSpec.official("v2-s")
    # A name never claims what the model lacks: no MBConv stage left, or a ratio no SE reads.
    assert ScalingSpec.official("b0", fused_stages=7, attention="eca", se_ratio=0.5).name == "B0 · 7 fused"
    assert ScalingSpec.official("b0", attention="none", se_ratio=0.5) == ScalingSpec.official("b0", attention="none")
    with pytest.raises(ValueError, match="^scaling: V2-S is not on B0's scaling line"):
        at_equal_macs(ScalingSpec.official("v2-s"), "depth")
    assert ScalingSpec.from_dict({k: v for k, v in b0.to_dict().items()
                                  if k not in ("attention", "se_ratio", "fused_stages")}) == b0
    with pytest.raises(ValueError, match="^attention: ImageNet weights exist only for B0's own blocks"):
        torchvision_name(ScalingSpec.official("b0", attention="eca"))
    assert torchvision_name(ScalingSpec.official("v2-m")) == "efficientnet_v2_m"


def test_a_run_and_bundle_written_before_the_block_had_fields_load_and_behave_as_before(tmp_path):
    """tests/data/v0.2-run.zip: a tiny run (phi=-4, alpha=beta=3, 3 classes) and its logits, written by the lab
    before attention, se_ratio and fused_stages existed. It imports, its spec is the paper's block, and its best
    checkpoint gives the logits it gave then."""
    done = import_bundle(DATA / "v0.2-run.zip", tmp_path)
    (run_dir,) = done.runs
    spec, train = runs.load_config(run_dir)
    assert "attention" not in json.loads((run_dir / runs.CONFIG).read_text())["spec"]
    assert spec.paper_block and spec.attention == "se" and spec.fused_stages is None
    ck = load_checkpoint(run_dir / runs.BEST)
    model = build_model(specs.from_dict(ck["spec"]))
    model.load_state_dict(ck["model"], strict=True)
    model.eval()
    expected = json.loads((DATA / "v0.2-run.logits.json").read_text())
    x = torch.linspace(-2, 2, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), torch.tensor(expected["logits"]), atol=1e-5)
    assert train.spec == spec


def test_card_cli_takes_the_block_and_v2_flags():
    def card(*args: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "effnet", "card", *args, "--json"], capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout)

    eca = card("--variant", "b0", "--attention", "eca")
    assert eca["spec"]["attention"] == "eca"
    assert (eca["params"], eca["macs"]) == (model_card(ScalingSpec.official("b0", attention="eca")).params,
                                            model_card(ScalingSpec.official("b0", attention="eca")).macs)
    v2 = card("--variant", "v2-s", "--geometry", "imagenet", "--num-classes", "1000")
    assert (v2["params"], round(v2["macs"] / 1e9, 3)) == (21_458_488, 8.366)
    empty = subprocess.run([sys.executable, "-m", "effnet", "card", "b0", "--attention", ""], capture_output=True,
                           text=True)
    assert empty.returncode == 2 and "attention: '' is not one of" in empty.stderr
    fused = card("--phi", "0", "--fused-stages", "2", "--se-ratio", "0.5")
    assert [r["operator"] for r in fused["stages"][1:4]] == ["Fused-MBConv1", "Fused-MBConv6", "MBConv6 + SE 0.5"]
