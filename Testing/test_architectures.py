"""Every registered architecture follows the network contract; UNet 3+, U-Net v2, FCN-8s and DeepLabv3+
follow their papers.

Small feature widths keep the forward passes fast on the CPU; the paper-size networks are only built
(on the meta device, no memory, no forward) for their parameter counts.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from UNetSegmentationLib.networks.blocks import EMPTY_LOGIT, LearnedUpsample, TrainingOutput, as_training_output, blank_absent_slices
from UNetSegmentationLib.networks.contract import ClassificationGuided, PrunableNetwork, SegmentationNetwork
from UNetSegmentationLib.networks.registry import ARCHITECTURES, build_network, get_architecture, prune_depths_of
from UNetSegmentationLib.inference.slicing import padding_for

NEW_ARCHITECTURES = ("unet3plus", "unetv2", "fcn8s", "deeplabv3plus")

# Small constructor arguments per architecture (on top of its registry defaults): every registered
# architecture must appear here, so a new one cannot skip these tests.
SMALL_KWARGS = {
    "unet": {"features": [4, 8, 16, 32, 64]},
    "unetplusplus": {"features": [4, 8, 16, 32, 64]},
    "unet3plus": {"features": [4, 8, 16, 32, 64]},
    "unetv2": {"features": [4, 8, 16, 32, 64], "skip_channels": 8},
    "fcn8s": {"features": [4, 8, 16, 32, 32]},
    "deeplabv3plus": {"features": [4, 8, 16, 32, 64], "aspp_channels": 16, "low_level_channels": 8, "decoder_channels": 16},
}
# ... and the --features value used for checkpoints made by `unetseg create`.
SMALL_FEATURES = {name: ",".join(map(str, kwargs["features"])) for name, kwargs in SMALL_KWARGS.items()}


def small_network(name: str, in_channels: int = 3, out_channels: int = 3, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = dict(get_architecture(name).default_kwargs, **SMALL_KWARGS[name], **overrides)
    return build_network(name, dict(kwargs, in_channels=in_channels, out_channels=out_channels))


def paper_network(name: str, in_channels: int = 3, out_channels: int = 1, **overrides) -> torch.nn.Module:
    """The paper configuration, built on the meta device (parameters have shapes but no storage)."""
    kwargs = dict(get_architecture(name).default_kwargs, features=list(get_architecture(name).feature_presets["paper"]), **overrides)
    with torch.device("meta"):
        return build_network(name, dict(kwargs, in_channels=in_channels, out_channels=out_channels))


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def engine_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the engine does: pad H, W at the far edges to the model's multiple, run, crop back."""
    rows, columns = x.shape[-2:]
    pad_rows, pad_columns = padding_for((rows, columns), model.required_multiple())
    padded = torch.nn.functional.pad(x, (0, pad_columns, 0, pad_rows))
    return model(padded)[..., :rows, :columns]


# --- the registry ---------------------------------------------------------------------------------


def test_every_registered_architecture_has_small_test_settings():
    assert set(ARCHITECTURES) == set(SMALL_KWARGS)


@pytest.mark.parametrize("name", NEW_ARCHITECTURES)
def test_new_architectures_declare_paper_presets_json_defaults_and_are_not_prunable(name):
    architecture = get_architecture(name)
    assert architecture.summary and architecture.paper and architecture.title
    assert "paper" in architecture.feature_presets and "small" in architecture.feature_presets
    assert list(architecture.feature_presets["paper"]) == architecture.default_kwargs["features"]
    assert json.loads(json.dumps(dict(architecture.default_kwargs))) == dict(architecture.default_kwargs)
    assert architecture.prune_depths == () and not architecture.prunable
    assert architecture.classification_head == (name == "unet3plus")
    assert architecture.deep_supervision == (name in ("unet3plus", "unetv2"))


@pytest.mark.child_process
def test_registry_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; from UNetSegmentationLib.networks.registry import ARCHITECTURES; print(','.join(ARCHITECTURES))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.strip().split(",")) >= set(NEW_ARCHITECTURES)


# --- the network contract, for every architecture ------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL_KWARGS))
def test_every_architecture_satisfies_the_network_contract_its_registry_entry_declares(name):
    architecture, model = get_architecture(name), small_network(name)
    assert isinstance(model, torch.nn.Module) and isinstance(model, SegmentationNetwork)
    assert isinstance(model, PrunableNetwork) == architecture.prunable
    assert isinstance(model, ClassificationGuided) == architecture.classification_head
    multiple = model.required_multiple()
    assert isinstance(multiple, int) and multiple >= 1 and multiple & (multiple - 1) == 0  # a power of two


@pytest.mark.parametrize("name", [name for name in sorted(SMALL_KWARGS) if get_architecture(name).prunable])
def test_prunable_networks_keep_the_depth_contract(name):
    model = small_network(name).eval()
    kwargs = dict(get_architecture(name).default_kwargs, **SMALL_KWARGS[name])
    assert model.depths == prune_depths_of(get_architecture(name), kwargs) == tuple(range(1, len(kwargs["features"])))
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        heads = model.forward_heads(x)
        assert [tuple(h.shape) for h in heads] == [(2, 3, 32, 48)] * len(model.depths)
        for depth in model.depths:
            assert tuple(model.forward_depth(x, depth).shape) == (2, 3, 32, 48)
            assert model.required_multiple(depth) == 2**depth
    counts = [model.parameter_count(depth) for depth in model.depths]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert model.parameter_count(None) == parameter_count(model) > counts[-1]  # the shallower heads are extra


@pytest.mark.parametrize("out_channels", [1, 3])
@pytest.mark.parametrize("name", sorted(SMALL_KWARGS))
def test_eval_output_has_the_input_size_at_awkward_sizes_after_engine_padding(name, out_channels):
    model = small_network(name, in_channels=5, out_channels=out_channels).eval()
    with torch.no_grad():
        logits = engine_forward(model, torch.randn(2, 5, 97, 131))
    assert logits.shape == (2, out_channels, 97, 131)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(SMALL_KWARGS))
def test_in_training_every_parameter_receives_a_gradient(name):
    model = small_network(name).train()
    x = torch.randn(2, 3, 64, 64)
    output = as_training_output(model(x))
    weights = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    loss = sum((head * weights).mean() for head in output.heads)
    if output.classification is not None:
        loss = loss + output.classification.sum()
    loss.backward()
    # (a gradient tensor, not necessarily non-zero: a tiny CBAM MLP may have a dead ReLU unit)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert sum(bool(torch.count_nonzero(p.grad)) for p in model.parameters()) > 0.95 * len(list(model.parameters()))


@pytest.mark.parametrize("name, head_count", [("unetplusplus", 4), ("unet3plus", 5), ("unetv2", 5)])
def test_deep_supervision_heads_come_back_at_full_size(name, head_count):
    model = small_network(name).train()
    heads = as_training_output(model(torch.randn(2, 3, 48, 80))).heads
    assert [tuple(h.shape) for h in heads] == [(2, 3, 48, 80)] * head_count


@pytest.mark.parametrize("name", ["unet3plus", "unetv2"])
def test_without_deep_supervision_training_returns_only_the_main_head_and_builds_no_side_heads(name):
    supervised, plain = small_network(name), small_network(name, deep_supervision=False)
    assert parameter_count(plain) < parameter_count(supervised)
    heads = as_training_output(plain.train()(torch.randn(2, 3, 32, 32))).heads
    assert [tuple(h.shape) for h in heads] == [(2, 3, 32, 32)]


@pytest.mark.parametrize("name", ["unet3plus", "unetv2"])
def test_main_head_is_the_last_training_head_and_the_eval_output(name):
    model = small_network(name, build_cgm=False) if name == "unet3plus" else small_network(name)
    model.eval()  # batch-norm running statistics in both passes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        evaluation = model(x)
        for module in model.modules():  # training-mode output, but without dropout/BN batch statistics
            module.training = module is model
        heads = as_training_output(model(x)).heads
    torch.testing.assert_close(heads[-1], evaluation)


# --- UNet 3+ -------------------------------------------------------------------------------------


def test_unet3plus_paper_configuration_has_26_97m_parameters():
    model = paper_network("unet3plus", deep_supervision=False, build_cgm=False)
    assert parameter_count(model) / 1e6 == pytest.approx(26.97, rel=0.01)


def test_unet3plus_full_scale_skips_concatenate_five_64_channel_maps_into_320():
    model = paper_network("unet3plus")
    for stage in model.decoder:
        assert [skip.conv.conv.out_channels for skip in stage.skips] == [64] * 5
        assert stage.fuse.conv.in_channels == stage.fuse.conv.out_channels == 320


def test_unet3plus_returns_slice_classification_logits_in_training():
    output = small_network("unet3plus").train()(torch.randn(2, 3, 32, 32))
    assert isinstance(output, TrainingOutput)
    assert output.classification is not None and tuple(output.classification.shape) == (2, 1)


def _with_cgm_bias(model: torch.nn.Module, bias: float) -> torch.nn.Module:
    conv = model.cgm[1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(bias)
    return model.eval()


@pytest.mark.parametrize("out_channels", [1, 3])
def test_unet3plus_cgm_judging_a_slice_empty_makes_every_pixel_background(out_channels):
    model = _with_cgm_bias(small_network("unet3plus", out_channels=out_channels), -50.0)
    assert model.classification_guidance
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    if out_channels == 1:
        assert (torch.sigmoid(logits) < 1e-6).all()
    else:
        probabilities = torch.softmax(logits, dim=1)
        assert (probabilities.argmax(dim=1) == 0).all() and (probabilities[:, 0] > 1 - 1e-6).all()


def test_unet3plus_cgm_judging_the_structure_present_leaves_the_segmentation_alone():
    model = _with_cgm_bias(small_network("unet3plus"), 50.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        guided = model(x)
        model.classification_guidance = False
        raw = model(x)
    torch.testing.assert_close(guided, raw)
    assert guided.abs().max() < EMPTY_LOGIT


def test_unet3plus_cgm_switched_off_at_runtime_returns_the_raw_segmentation():
    model = _with_cgm_bias(small_network("unet3plus", out_channels=1), -50.0)
    model.classification_guidance = False
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.abs().max() < EMPTY_LOGIT


def test_unet3plus_without_cgm_builds_no_classifier_and_never_guides():
    model = small_network("unet3plus", build_cgm=False)
    assert model.cgm is None and not any("cgm" in name for name, _ in model.named_parameters())
    model.classification_guidance = True  # what the engine sets by default: ignored without a CGM
    assert model.classification_guidance is False
    assert as_training_output(model.train()(torch.randn(2, 3, 32, 32))).classification is None


def test_blanking_is_decided_slice_by_slice():
    logits = torch.randn(2, 3, 4, 4)
    blanked = blank_absent_slices(logits, torch.tensor([True, False]))
    torch.testing.assert_close(blanked[0], logits[0])
    assert (blanked[1, 0] == EMPTY_LOGIT).all() and (blanked[1, 1:] == -EMPTY_LOGIT).all()


# --- U-Net v2 ------------------------------------------------------------------------------------


def test_unetv2_sdi_fuses_every_level_at_c_channels_with_one_smoothing_conv_per_pair():
    model = paper_network("unetv2")
    assert len(model.sdi) == 5 and all(len(sdi.smooth) == 5 for sdi in model.sdi)
    convs = [smooth.conv for sdi in model.sdi for smooth in sdi.smooth]
    assert all(conv.in_channels == conv.out_channels == 32 and conv.kernel_size == (3, 3) for conv in convs)
    assert [a.project.conv.out_channels for a in model.attention] == [32] * 5


def test_unetv2_sdi_resizes_by_average_pooling_down_and_bilinear_up():
    from UNetSegmentationLib.networks.unetv2 import SemanticDetailInfusion

    finer, same, coarser = torch.randn(1, 2, 16, 16), torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(SemanticDetailInfusion.resize(finer, (8, 8)), torch.nn.functional.avg_pool2d(finer, 2))
    assert SemanticDetailInfusion.resize(same, (8, 8)) is same
    assert SemanticDetailInfusion.resize(coarser, (8, 8)).shape == (1, 2, 8, 8)


# --- FCN-8s --------------------------------------------------------------------------------------


def test_fcn8s_paper_configuration_has_134m_parameters():
    # Long et al., Table 1/2: FCN-8s (VGG16) 134M parameters (21 PASCAL classes; BatchNorm adds 0.02%)
    assert parameter_count(paper_network("fcn8s", out_channels=21)) / 1e6 == pytest.approx(134, rel=0.01)


@pytest.mark.parametrize("factor", [2, 8])
def test_fcn8s_learned_upsampling_starts_as_bilinear_interpolation(factor):
    upsample = LearnedUpsample(2, 2, factor)
    x = torch.randn(1, 2, 6, 7)
    expected = torch.nn.functional.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    with torch.no_grad():
        result = upsample(x)
    assert result.shape == expected.shape
    interior = (slice(None), slice(None), slice(factor, -factor), slice(factor, -factor))  # borders: zero padding vs clamping
    torch.testing.assert_close(result[interior], expected[interior])


def test_fcn8s_skip_score_heads_start_at_zero_so_training_starts_from_fcn32s():
    model = small_network("fcn8s")
    for head in (model.score_pool3, model.score_pool4):
        assert not head.weight.any() and not head.bias.any()


# --- DeepLabv3+ ----------------------------------------------------------------------------------


def test_deeplabv3plus_trains_at_batch_size_one():
    model = small_network("deeplabv3plus").train()
    logits = model(torch.randn(1, 3, 64, 64))
    logits.mean().backward()
    assert logits.shape == (1, 3, 64, 64)


def test_deeplabv3plus_aspp_has_four_atrous_branches_and_image_pooling_of_256_channels():
    model = paper_network("deeplabv3plus")
    branches = model.aspp.branches
    assert [b.conv.dilation for b in branches[:4]] == [(1, 1), (6, 6), (12, 12), (18, 18)]
    assert all(b.conv.out_channels == 256 for b in branches[:4]) and branches[4].conv.conv.out_channels == 256
    assert model.aspp.project.conv.in_channels == 5 * 256 and model.aspp.project.conv.out_channels == 256
    assert model.project_low_level.conv.out_channels == 48
    assert model.decoder[0].conv.in_channels == 256 + 48


def test_deeplabv3plus_encoder_keeps_output_stride_16():
    model = small_network("deeplabv3plus").eval()
    with torch.no_grad():
        features = model.high_level(model.low_level(model.stem(torch.randn(1, 3, 64, 96))))
    assert features.shape[-2:] == (4, 6)


# --- through the command line ---------------------------------------------------------------------


def _assert_same_grid(output: sitk.Image, reference: sitk.Image) -> None:
    assert output.GetSize() == reference.GetSize()
    np.testing.assert_allclose(output.GetSpacing(), reference.GetSpacing())
    np.testing.assert_allclose(output.GetOrigin(), reference.GetOrigin())
    np.testing.assert_allclose(output.GetDirection(), reference.GetDirection())


@pytest.mark.parametrize("name", sorted(SMALL_KWARGS))
def test_every_architecture_segments_the_chest_ct_through_unetseg_predict(cli, tmp_path, chest_ct_path, name):
    checkpoint = tmp_path / f"{name}.safetensors"
    created = cli("create", "--arch", name, "--classes", "lung,bone", "--features", SMALL_FEATURES[name], checkpoint)
    assert created.code == 0, created.stderr
    output = tmp_path / "labels.nrrd"
    result = cli("predict", "--checkpoint", checkpoint, "--progress", "none", chest_ct_path, output)
    assert result.code == 0, result.stderr
    labels = sitk.ReadImage(str(output))
    _assert_same_grid(labels, sitk.ReadImage(str(chest_ct_path)))
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) <= {0, 1, 2}


@pytest.mark.parametrize(
    "cgm_bias, options, expected_label",
    [(-50.0, (), 0), (50.0, (), 1), (-50.0, ("--no-cgm",), 1)],
    ids=["judged-empty", "judged-present", "judged-empty-but-no-cgm"],
)
def test_unet3plus_cgm_decides_empty_slices_through_unetseg_predict(cli, tmp_path, chest_ct_path, cgm_bias, options, expected_label):
    from UNetSegmentationLib.model.checkpoint import load_checkpoint, save_checkpoint

    created = tmp_path / "created.safetensors"
    assert cli("create", "--arch", "unet3plus", "--classes", "lung", "--features", SMALL_FEATURES["unet3plus"], created).code == 0
    checkpoint = load_checkpoint(created)
    state = dict(checkpoint.state_dict)
    state["head.conv.weight"] = torch.zeros_like(state["head.conv.weight"])
    state["head.conv.bias"] = torch.full_like(state["head.conv.bias"], 20.0)  # the segmentation says "lung" everywhere
    state["cgm.1.weight"] = torch.zeros_like(state["cgm.1.weight"])
    state["cgm.1.bias"] = torch.full_like(state["cgm.1.bias"], cgm_bias)
    modified = save_checkpoint(tmp_path / "guided.safetensors", state, checkpoint.metadata)
    output = tmp_path / "labels.nrrd"
    result = cli("predict", "--checkpoint", modified, "--progress", "none", "--no-crop", *options, chest_ct_path, output)  # every voxel: outside the body too
    assert result.code == 0, result.stderr
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(output))) == expected_label).all()
