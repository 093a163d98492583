"""`python -m effnet card` as a user runs it, and the ImageNet-weights loader offline and cached."""

import json
import subprocess
import sys

import pytest
import torch
import torchvision

from effnet import ScalingSpec, load_pretrained, model_card


def run_card(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "effnet", "card", *args], capture_output=True, text=True)


def test_card_cli_prints_the_stage_table_and_totals():
    out = run_card("b3")
    assert out.returncode == 0, out.stderr
    card = model_card(ScalingSpec.official("b3"))
    assert f"{card.params:,}" in out.stdout and f"{card.macs:,}" in out.stdout
    assert "MBConv6" in out.stdout and "43x43" in out.stdout and "\"FLOPs\"" in out.stdout


def test_card_cli_custom_spec_as_json():
    out = run_card("--phi", "1.5", "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15", "--geometry", "imagenet",
                   "--num-classes", "1000", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    spec = ScalingSpec(phi=1.5, geometry="imagenet", num_classes=1000)
    assert data["params"] == model_card(spec).params and data["resolution"] == spec.resolution
    assert len(data["stages"]) == 9


@pytest.mark.parametrize("args, message", [(["b9"], "variant:"), (["--phi", "-9"], "phi:"),
                                          (["--phi", "1", "--alpha", "0"], "alpha:"), ([], "variant:")])
def test_card_cli_rejects_bad_specs_clearly(args, message):
    out = run_card(*args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_pretrained_loader_fails_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = ScalingSpec.official("b0", normalization="imagenet")
    with pytest.raises(RuntimeError, match="without internet, copy that file to"):
        load_pretrained(spec)
    assert not list(tmp_path.rglob("*.pth")), "a failed download must not leave a file behind"
    with pytest.raises(RuntimeError, match="efficientnet_v2_s.*without internet, copy that file to"):
        load_pretrained(ScalingSpec.official("v2-s", normalization="imagenet"))


def test_pretrained_loader_uses_a_cached_weights_file(tmp_path, monkeypatch):
    """With the file in torch's cache (as after a download), B0 loads it; a new 100-class head is kept."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1
    reference = torchvision.models.efficientnet_b0().state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference, cache / weights.url.rsplit("/", 1)[-1])
    model = load_pretrained(ScalingSpec.official("b0", normalization="imagenet"))
    assert torch.equal(model.state_dict()["features.3.1.block.0.0.weight"], reference["features.3.1.block.0.0.weight"])
    assert model.classifier[1].out_features == 100
    with pytest.raises(ValueError, match="^normalization:"):
        load_pretrained(ScalingSpec.official("b0"))
    with pytest.raises(ValueError, match="^variant:"):
        load_pretrained(ScalingSpec(phi=1, normalization="imagenet"))
