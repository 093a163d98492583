"""The scaling rules, the official table, single-dimension scaling and spec validation."""

import math

import pytest

from effnet import OFFICIAL, ScalingSpec, model_card
from effnet.arch.scaling import round_channels, round_repeats, stage_strides

CIFAR_RESOLUTIONS = {"b0": 32, "b1": 34, "b2": 37, "b3": 43, "b4": 54, "b5": 65, "b6": 75, "b7": 86}


def test_official_table_matches_the_paper():
    table = {k: (v.width, v.depth, v.resolution, v.dropout) for k, v in OFFICIAL.items()}
    assert table["b0"] == (1.0, 1.0, 224, 0.2)
    assert table["b7"] == (2.0, 3.1, 600, 0.5)
    spec = ScalingSpec.official("B3", geometry="imagenet", num_classes=1000)
    assert (spec.width_mult, spec.depth_mult, spec.resolution, spec.drop_rate) == (1.2, 1.4, 300, 0.3)


@pytest.mark.parametrize("variant, resolution", CIFAR_RESOLUTIONS.items())
def test_official_cifar_resolution_is_32px_scaled_by_the_paper_ratio(variant, resolution):
    spec = ScalingSpec.official(variant, geometry="cifar")
    assert spec.resolution == resolution
    assert spec.width_mult == OFFICIAL[variant].width and spec.depth_mult == OFFICIAL[variant].depth


def test_official_b7_differs_from_the_formula_and_says_so():
    spec = ScalingSpec.official("b7", geometry="imagenet")
    assert spec.is_official and spec.phi == 7
    assert (spec.width_mult, spec.depth_mult, spec.resolution) == (2.0, 3.1, 600)
    assert spec.formula_width_mult == pytest.approx(1.95, abs=0.005)
    assert spec.formula_depth_mult == pytest.approx(3.58, abs=0.005)
    assert spec.formula_resolution == 596


def test_custom_spec_derived_values():
    spec = ScalingSpec(phi=1.5, alpha=1.2, beta=1.1, gamma=1.15, geometry="cifar", num_classes=100)
    assert spec.depth_mult == pytest.approx(1.2**1.5)
    assert spec.width_mult == pytest.approx(1.1**1.5)
    assert spec.resolution == round(32 * 1.15**1.5) == 39
    assert spec.constraint == pytest.approx(1.2 * 1.1**2 * 1.15**2)
    assert spec.predicted_flops_ratio == pytest.approx(spec.constraint**1.5)
    assert not spec.is_official


def test_rounding_rules():
    assert round_channels(32 * 1.1) == 32  # 35.2 -> nearest multiple of 8, within 10%
    assert round_channels(16 * 1.4) == 24  # 22.4 -> 24
    assert round_channels(3.0) == 8  # never below the divisor
    assert round_channels(44.0) == 48  # ties go up (int(44 + 4) // 8 * 8)
    assert round_channels(100.0) == 104
    assert round_repeats(3, 1.2) == 4 and round_repeats(2, 1.1) == 3
    assert round_repeats(1, 1.0) == 1 and round_repeats(4, 0.3) == 2
    assert round_repeats(5, 1.2) == 6  # 5 * 1.2 is 6.000000000000001 in floats; still ceil -> 6
    assert round_repeats(1, 0.01) == 1  # every stage keeps at least one block


def test_head_width_rule_is_four_times_the_last_stage():
    for name in OFFICIAL:
        spec = ScalingSpec.official(name)
        assert spec.head_channels == 4 * round_channels(320 * spec.width_mult)
    assert ScalingSpec.official("b0").head_channels == 1280
    custom = ScalingSpec(phi=2.5, beta=1.13)
    assert custom.head_channels == 4 * round_channels(320 * 1.13**2.5)


def test_strides_per_geometry():
    assert stage_strides(32) == (2, (1, 2, 2, 2, 1, 2, 1))
    assert stage_strides(16) == (1, (1, 2, 2, 2, 1, 2, 1))
    assert stage_strides(8) == (1, (1, 1, 2, 2, 1, 2, 1))
    assert ScalingSpec(geometry="cifar").stride == 8
    assert ScalingSpec(geometry="imagenet").stride == 32


@pytest.mark.parametrize("method", ["depth", "width", "resolution"])
def test_single_dimension_scaling_hits_the_2_pow_phi_budget(method):
    phi = 3
    spec = ScalingSpec(phi=phi, scaling=method)
    assert spec.predicted_flops_ratio == pytest.approx(2**phi)
    changed = {"depth": spec.depth_mult, "width": spec.width_mult, "resolution": spec.resolution_mult}
    assert [k for k, v in changed.items() if v != 1.0] == [method]
    # The real MACs grow in the same direction (rounding moves them, the card shows by how much).
    ratio = model_card(spec).macs / model_card(ScalingSpec()).macs
    assert 0.6 * 2**phi < ratio < 1.5 * 2**phi


def test_official_variant_with_single_dimension_scaling_uses_its_phi():
    spec = ScalingSpec.official("b2").with_scaling("width")
    assert spec.variant is None and spec.phi == 2 and spec.width_mult == pytest.approx(2.0)


def test_spec_round_trips_through_a_dict():
    for spec in (ScalingSpec.official("b5", geometry="imagenet", num_classes=10), ScalingSpec(phi=-1.5, beta=1.05)):
        assert ScalingSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown fields"):
        ScalingSpec.from_dict({"phi": 1, "colour": "red"})


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(alpha=0), "alpha"),
        (dict(beta=-1.1), "beta"),
        (dict(gamma=math.nan), "gamma"),
        (dict(alpha=math.inf), "alpha"),
        (dict(phi=math.nan), "phi"),
        (dict(phi=11), "phi"),
        (dict(phi=-5), "phi"),
        (dict(phi=True), "phi"),
        (dict(geometry="mnist"), "geometry"),
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes=2.5), "num_classes"),
        (dict(base_resolution=15), "base_resolution"),
        (dict(output_stride=4), "output_stride"),
        (dict(dropout=1.0), "dropout"),
        (dict(scaling="diagonal"), "scaling"),
        (dict(phi=-4, gamma=1.5), "resolution"),  # 32 * 1.5**-4 = 6 px
    ],
)
def test_bad_specs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ScalingSpec(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(phi=8, beta=2.0),  # over a trillion parameters
                                    dict(phi=10, gamma=2.0, geometry="imagenet")])  # 229k px: activations too large
def test_too_large_specs_have_no_card_and_are_never_built(kwargs):
    """The size guard lives with the card (scaling stays below it): refused before anything is allocated."""
    from effnet import build_model

    spec = ScalingSpec(**kwargs)
    with pytest.raises(ValueError, match="^phi:"):
        model_card(spec)
    with pytest.raises(ValueError, match="^phi:"):
        build_model(spec)


def test_unknown_official_variant():
    with pytest.raises(ValueError, match="^variant:"):
        ScalingSpec.official("b8")


@pytest.mark.parametrize("geometry", ["cifar", "imagenet"])
@pytest.mark.parametrize("phi", [-3, 0, 8])
def test_documented_phi_range_builds_analytically(geometry, phi):
    spec = ScalingSpec(phi=phi, geometry=geometry)
    assert model_card(spec).params > 0


@pytest.mark.parametrize("spec", [ScalingSpec(phi=1), ScalingSpec(phi=2), ScalingSpec(phi=3), ScalingSpec.official("b3"),
                                  ScalingSpec(phi=2, geometry="imagenet")], ids=lambda s: f"{s.name}-{s.geometry}")
def test_single_dimension_methods_are_solved_to_the_compound_models_actual_macs(spec):
    """The nominal 2^phi misses by up to 25% after rounding; the solved budgets land within a few percent."""
    from effnet.arch.card import at_equal_macs, scaling_methods

    target = model_card(spec).macs
    for method in ("depth", "width", "resolution"):
        solved = at_equal_macs(spec, method)
        assert solved.scaling == method and solved.variant is None
        assert abs(model_card(solved).macs / target - 1) < 0.10, method
        changed = {"depth": solved.depth_mult, "width": solved.width_mult, "resolution": solved.resolution_mult}
        assert [k for k, v in changed.items() if v != 1.0] == [method]
    rows = {r["method"]: r for r in scaling_methods(spec)}
    assert rows["compound"]["FLOPs vs phi=0"] == round(model_card(spec).flops_ratio, 2)
    assert all(abs(r["FLOPs vs phi=0"] / rows["compound"]["FLOPs vs phi=0"] - 1) < 0.10 for r in rows.values())
    assert ScalingSpec.from_dict(at_equal_macs(spec, "width").to_dict()) == at_equal_macs(spec, "width")


def test_image_counts_are_cut_to_the_dataset_with_a_note():
    from effnet.training.config import TrainConfig, fit_to_dataset

    quick = TrainConfig(spec=ScalingSpec(phi=-3), subset=2000, eval_subset=500, val_size=1000)
    fitted, note = fit_to_dataset(quick, n_train=1437, n_test=300)
    assert (fitted.val_size, fitted.subset, fitted.eval_subset) == (287, 1150, 287)
    assert "1,437 training" in note and "trains on 1,150" in note
    assert fit_to_dataset(quick, n_train=50_000, n_test=10_000) == (quick, None)
