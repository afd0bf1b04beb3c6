"""U-Net and UNet++ as the UNet++ paper specifies them: sizes, heads, and exact pruning; the one
table of feature presets; the one naming of depths."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.depth import ACCURATE, depth_from_tag, depth_tag, parse_depth
from UNetSegmentationLib.networks.presets import FEATURE_PRESETS, paper_features
from UNetSegmentationLib.networks.registry import ARCHITECTURES, build_network, get_architecture
from UNetSegmentationLib.networks.unet import UNet
from UNetSegmentationLib.networks.unetplusplus import UNetPlusPlus


def millions(count: int) -> float:
    return count / 1e6


def test_unet_paper_configuration_has_7_76m_parameters():
    model = UNet(in_channels=1, out_channels=1)
    assert millions(sum(p.numel() for p in model.parameters())) == pytest.approx(7.76, rel=0.01)


def test_unetplusplus_paper_configuration_has_9_04m_parameters():
    model = UNetPlusPlus(in_channels=1, out_channels=1)
    assert millions(model.parameter_count(4)) == pytest.approx(9.04, rel=0.01)


@pytest.mark.parametrize("depth, paper_millions", [(1, 0.10), (2, 0.51), (3, 2.20), (4, 9.04)])
def test_unetplusplus_subnetworks_match_the_papers_sizes(depth, paper_millions):
    model = UNetPlusPlus(in_channels=1, out_channels=1)
    assert millions(model.parameter_count(depth)) == pytest.approx(paper_millions, rel=0.01, abs=0.005)


@pytest.fixture(scope="module")
def small_unetpp() -> UNetPlusPlus:
    torch.manual_seed(0)
    model = UNetPlusPlus(in_channels=3, out_channels=3, features=(4, 8, 16, 32, 64))
    # non-trivial batch-norm statistics, so eval mode is not an identity normalisation
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_pruned_forward_equals_head_of_the_full_network(small_unetpp, depth):
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        heads = small_unetpp.forward_heads(x)
        pruned = small_unetpp.forward_depth(x, depth)
    assert pruned.shape == (2, 3, 48, 64)
    torch.testing.assert_close(pruned, heads[depth - 1], rtol=1e-5, atol=1e-6)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            fn()
    return counter.get_total_flops()


def test_each_shallower_depth_performs_fewer_operations(small_unetpp):
    x = torch.randn(1, 3, 64, 64)
    flops = [count_flops(lambda d=d: small_unetpp.forward_depth(x, d)) for d in (1, 2, 3, 4)]
    assert flops == sorted(flops) and len(set(flops)) == 4
    full = count_flops(lambda: small_unetpp.forward_heads(x))
    assert flops[-1] < full  # depth 4 skips the three shallower heads
    assert flops[1] * 2 < flops[3]


def test_eval_forward_is_the_deepest_head_and_training_returns_every_head(small_unetpp):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small_unetpp(x), small_unetpp.forward_depth(x, 4))
    small_unetpp.train()
    try:
        heads = small_unetpp(x)
    finally:
        small_unetpp.eval()
    assert [h.shape for h in heads] == [torch.Size([2, 3, 32, 32])] * 4


def test_pruned_modules_are_the_nodes_with_i_plus_j_at_most_depth(small_unetpp):
    depth2 = set(map(id, small_unetpp.modules_for_depth(2)))
    names = {name for name, module in small_unetpp.nodes.items() if id(module) in depth2}
    assert names == {"x00", "x10", "x20", "x01", "x11", "x02"}


def test_wide_unet_preset_is_35_to_560():
    assert get_architecture("unet").feature_presets["wide"] == (35, 70, 140, 280, 560)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_constructor_registry_and_presets_read_the_one_feature_table(name):
    architecture = get_architecture(name)
    constructor_default = inspect.signature(architecture.network_class().__init__).parameters["features"].default
    assert tuple(constructor_default) == paper_features(name) == tuple(architecture.default_kwargs["features"])
    assert architecture.feature_presets == FEATURE_PRESETS[name]
    assert architecture.supports()["feature_presets"] == {k: list(v) for k, v in FEATURE_PRESETS[name].items()}


def test_every_preset_has_as_many_levels_as_the_paper_configuration():
    for name, presets in FEATURE_PRESETS.items():
        assert name in ARCHITECTURES
        assert {len(features) for features in presets.values()} == {len(paper_features(name))}, name


def test_every_registered_architecture_builds_and_segments_at_its_multiple():
    for name, architecture in ARCHITECTURES.items():
        kwargs = dict(architecture.default_kwargs, in_channels=3, out_channels=2)
        if "features" in kwargs and architecture.feature_presets.get("small"):
            kwargs["features"] = list(architecture.feature_presets["small"])
        model = build_network(name, kwargs).eval()
        size = max(model.required_multiple(), 32)
        with torch.no_grad():
            assert model(torch.randn(1, 3, size, size)).shape == (1, 2, size, size), name


# --- depth names: model/depth.py is the one place that spells them --------------------------------


@pytest.mark.parametrize("depth, tag", [(1, "L1"), (3, "L3"), (np.int64(4), "L4"), (ACCURATE, "accurate"), (None, "full")])
def test_every_depth_has_one_tag_and_the_tag_reads_back(depth, tag):
    assert depth_tag(depth) == tag
    assert depth_from_tag(tag) == depth


def test_the_tag_older_reports_wrote_for_the_whole_network_still_reads_as_the_whole_network():
    assert depth_from_tag("default") is None


@pytest.mark.parametrize("not_a_depth", [0, -1, True, "2", "L2", "full"])
def test_depth_tag_refuses_what_is_not_a_depth(not_a_depth):
    with pytest.raises(ValueError):
        depth_tag(not_a_depth)


@pytest.mark.parametrize("not_a_tag", ["", "L", "L0", "2", "l2", "L2.5", "L²", "Full"])
def test_depth_from_tag_refuses_what_is_not_a_tag(not_a_tag):
    with pytest.raises(ValueError):
        depth_from_tag(not_a_tag)


@pytest.mark.parametrize("text, depth", [(None, None), ("accurate", ACCURATE), ("3", 3), ("L3", 3), ("l2", 2)])
def test_the_depth_option_accepts_numbers_tags_and_accurate(text, depth):
    assert parse_depth(text) == depth


@pytest.mark.parametrize("text", ["full", "default", "deep", "-1"])
def test_the_depth_option_refuses_anything_else_with_one_message(text):
    with pytest.raises(UserError, match="--depth must be 1..4"):
        parse_depth(text)


def test_the_bundled_models_shipped_export_keeps_the_name_the_depth_tag_gives_it():
    from UNetSegmentationLib.backends.onnx_cache import shipped_export
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    bundled = Path(__file__).resolve().parent / "Data" / "chest-ct-unetplusplus.safetensors"
    shipped = shipped_export(load_checkpoint(bundled, weights=False), 3)
    assert ".L3." in shipped.name and shipped.is_file(), f"{shipped.name} is not among {sorted(p.name for p in bundled.parent.iterdir())}"
