"""``unetseg train`` as a specification.

- A short run on the real chest CT shipped in slicerio (7 classes from a Slicer .seg.nrrd) lowers
  the loss and beats trivial baselines on held-out slices.
- The checkpoint carries what ``predict`` needs and what the training measured: classes with names,
  colours and terminology from the segmentation, the normalisation, the held-out slices, the Dice
  and ms/slice of every UNet++ depth, and the recommended depth (the shallowest within tolerance).
- Runs are repeatable from ``--seed``; ``--resume`` continues from the saved step and ends where an
  uninterrupted run ends.
- Bad data stops with one clear message before any training.
- Every registered architecture trains through the same command (losses via ``as_training_output``).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import make_volume
from synthetic_cases import write_tiny_case
from UNetSegmentationLib.networks.registry import ARCHITECTURES

FAST = ("--threads", "1", "--progress", "none", "--device", "cpu")


def read_log(path):
    return list(csv.DictReader(open(path)))


# --- a short run on the real chest CT --------------------------------------------------------------------


@pytest.fixture(scope="module")
def chest_run(tmp_path_factory, chest_ct_path, chest_segmentation_path):
    """100 steps of a small UNet++ (features 8..64, depth 3) on whole slices of the chest CT (a crop
    must show both lungs to tell left from right), 20 % of the slices held out."""
    from conftest import run_cli

    folder = tmp_path_factory.mktemp("chest")
    checkpoint = folder / "chest.safetensors"
    result = run_cli(
        "train", "--image", chest_ct_path, "--label", chest_segmentation_path, "--val-slices", "0.2",
        "--features", "8,16,32,64", "--epochs", "4", "--steps-per-epoch", "25", "--batch-size", "2", "--crop", "128",
        "--lr", "3e-3", "--seed", "0", *FAST, checkpoint,
    )
    assert result.code == 0, result.stderr
    return checkpoint


def held_out_truth(chest_ct_path, chest_segmentation_path, slices):
    """Channel indices of the held-out slices (slices along k for this axial CT)."""
    from UNetSegmentationLib.training.data import load_case, resolve_classes, Case

    loaded = load_case(Case("chest", chest_ct_path, chest_segmentation_path))
    _, (lookup,) = resolve_classes([("chest", loaded.label)])
    return lookup[loaded.label.array][slices]


def test_training_lowers_the_loss(chest_run):
    log = read_log(chest_run.with_suffix(".csv"))
    assert [int(r["epoch"]) for r in log] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in log] == [25, 50, 75, 100]
    assert float(log[-1]["loss"]) < 0.85 * float(log[0]["loss"])


def test_held_out_dice_beats_trivial_baselines(chest_run, chest_ct_path, chest_segmentation_path):
    from UNetSegmentationLib.model.checkpoint import read_metadata
    from UNetSegmentationLib.evaluation.evaluate import dice_per_class

    metadata = read_metadata(chest_run)
    (held_out,) = metadata.training["data"]["held_out_slices"]
    truth = held_out_truth(chest_ct_path, chest_segmentation_path, held_out["slices"])
    classes = len(metadata.classes)
    all_background = np.nanmean(np.nan_to_num(dice_per_class(np.zeros_like(truth), truth, classes)))
    majority = np.bincount(truth[truth > 0]).argmax()  # 'tissue' everywhere
    majority_everywhere = np.nanmean(dice_per_class(np.full_like(truth, majority), truth, classes))
    trained = metadata.training["validation"]["dice"]
    assert all_background == 0.0
    assert trained > majority_everywhere + 0.1, (trained, majority_everywhere)
    # large, high-contrast structures are learnt first
    per_class = metadata.training["validation"]["by_depth"]["L3"]["per_class"]
    assert min(per_class["right lung"], per_class["left lung"], per_class["tissue"]) > 0.8, per_class


def test_checkpoint_records_classes_validation_and_depth_selection(chest_run):
    from UNetSegmentationLib.model.checkpoint import read_metadata
    from UNetSegmentationLib.training.selection import select_depth

    metadata = read_metadata(chest_run)
    names = [c.name for c in metadata.classes]
    assert names == ["ribs", "cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column", "right lung", "left lung", "tissue"]
    right_lung = metadata.classes[4]
    assert right_lung.color == pytest.approx((0.0862745, 0.772549, 0.278431))
    assert right_lung.terminology["typeModifier"][2] == "Right"
    assert metadata.normalization.window == (-1000.0, 1000.0) and metadata.training_spacing == pytest.approx([3.0469, 3.0469], abs=1e-3)
    # held-out slices: contiguous blocks covering 20 % of the 34 slices, with a gap of one slice (the context)
    (held_out,) = metadata.training["data"]["held_out_slices"]
    assert held_out["image"] == "CTChest4.nrrd" and len(held_out["slices"]) == 7
    assert metadata.training["data"]["training"][0]["train_slices"] == 34 - 7 - 6
    # every depth has a Dice and a measured speed; the recommended depth follows the paper's rule
    assert sorted(metadata.depth_metrics) == [1, 2, 3]
    assert all(m["ms_per_slice"] > 0 and 0 <= m["dice"] <= 1 for m in metadata.depth_metrics.values())
    assert metadata.recommended_depth == select_depth({d: m["dice"] for d, m in metadata.depth_metrics.items()}, 0.01)


def test_depth_selection_picks_the_shallowest_depth_within_tolerance():
    from UNetSegmentationLib.training.selection import select_depth

    assert select_depth({1: 0.70, 2: 0.795, 3: 0.80, 4: 0.79}, tolerance=0.01) == 2
    assert select_depth({1: 0.70, 2: 0.795, 3: 0.80, 4: 0.79}, tolerance=0.0) == 3
    assert select_depth({1: 0.70, 2: 0.795, 3: 0.80, 4: 0.79}, tolerance=0.2) == 1
    assert select_depth({1: float("nan"), 2: 0.5}) == 2 and select_depth({}) is None


def test_predict_uses_the_recommended_depth_and_evaluate_reproduces_the_held_out_dice(cli, chest_run, chest_ct_path, chest_segmentation_path, tmp_path):
    from UNetSegmentationLib.model.checkpoint import read_metadata

    metadata = read_metadata(chest_run)
    result = cli("predict", "--checkpoint", chest_run, "--progress", "json", "--device", "cpu", chest_ct_path, tmp_path / "out.seg.nrrd")
    assert result.code == 0, result.stderr
    assert result.events[0]["depth"] == metadata.recommended_depth
    # evaluate on the recorded held-out slices: the same Dice the training measured, for every depth
    result = cli("evaluate", "--checkpoint", chest_run, "--image", chest_ct_path, "--label", chest_segmentation_path,
                 "--slices", "checkpoint", "--output-dir", tmp_path / "eval", "--progress", "none", "--device", "cpu")
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    for depth, metrics in metadata.depth_metrics.items():
        rows = [r for r in report["rows"] if r["depth"] == f"L{depth}" and r["dice"] is not None]
        assert np.mean([r["dice"] for r in rows]) == pytest.approx(metrics["dice"], abs=1e-4)
    assert (tmp_path / "eval" / "accuracy-vs-speed.png").is_file()


# --- held-out slices ---------------------------------------------------------------------------------------


def test_held_out_slices_are_contiguous_blocks_with_a_gap():
    from UNetSegmentationLib.training.data import held_out_blocks

    train, val = held_out_blocks(34, 0.2, blocks=3, gap=1)
    assert len(val) == 7 and not set(train) & set(val)
    runs = np.split(val, np.flatnonzero(np.diff(val) > 1) + 1)
    assert len(runs) == 3 and val.min() > 0 and val.max() < 33  # spread along the volume
    for run in runs:  # the neighbours of a block are in neither set
        assert run[0] - 1 not in train and run[-1] + 1 not in train
    train, val = held_out_blocks(10, 0.3, blocks=1, gap=0)
    assert list(val) == [3, 4, 5] and len(train) == 7


# --- repeatability and resume ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A synthetic CT-like volume and its label map ('body' 1, 'bone' 2), with a datalist."""
    return write_tiny_case(tmp_path_factory.mktemp("tiny"))


def tiny_train(cli, data, out, *extra):
    return cli("train", "--datalist", data / "datalist.json", "--classes", "body,bone", "--val-slices", "0.25", "--val-blocks", "1",
               "--features", "4,8", "--crop", "32", "--batch-size", "2", "--steps-per-epoch", "3", "--seed", "7", *FAST, *extra, out)


def weights(path):
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    return load_checkpoint(path).state_dict


def test_the_same_seed_gives_the_same_run(cli, tiny_data, tmp_path):
    for name in ("a", "b"):
        result = tiny_train(cli, tiny_data, tmp_path / f"{name}.safetensors", "--epochs", "2")
        assert result.code == 0, result.stderr
    a, b = weights(tmp_path / "a.safetensors"), weights(tmp_path / "b.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = tiny_train(cli, tiny_data, tmp_path / "c.safetensors", "--epochs", "2", "--seed", "8")
    assert c.code == 0 and not all(torch.equal(a[k], weights(tmp_path / "c.safetensors")[k]) for k in a)


def test_resume_continues_from_the_saved_step_and_ends_where_an_uninterrupted_run_ends(cli, tiny_data, tmp_path):
    straight = tiny_train(cli, tiny_data, tmp_path / "straight.safetensors", "--epochs", "3")
    assert straight.code == 0, straight.stderr
    first = tiny_train(cli, tiny_data, tmp_path / "split.safetensors", "--epochs", "3", "--stop-after", "2")
    assert first.code == 0, first.stderr
    assert [int(r["step"]) for r in read_log(tmp_path / "split.csv")] == [3, 6]
    assert (tmp_path / "split.resume.pt").is_file()
    # without --resume the unfinished run is protected
    again = tiny_train(cli, tiny_data, tmp_path / "split.safetensors", "--epochs", "3")
    assert again.code == 2 and "--resume" in again.stderr
    resumed = cli("train", "--datalist", tiny_data / "datalist.json", "--classes", "body,bone", "--val-slices", "0.25", "--val-blocks", "1",
                  "--features", "4,8", "--crop", "32", "--batch-size", "2", "--steps-per-epoch", "3", "--seed", "7",
                  "--threads", "1", "--device", "cpu", "--progress", "json", "--epochs", "3", "--resume", tmp_path / "split.safetensors")
    assert resumed.code == 0, resumed.stderr
    assert any(e.get("message") == "resuming after epoch 2 (step 6)" for e in resumed.events)
    assert [e["step"] for e in resumed.events if e["event"] == "epoch"] == [9]
    log, reference = read_log(tmp_path / "split.csv"), read_log(tmp_path / "straight.csv")
    assert [int(r["step"]) for r in log] == [3, 6, 9]
    assert [r["loss"] for r in log] == [r["loss"] for r in reference]
    assert [r["val_dice"] for r in log] == [r["val_dice"] for r in reference]
    a, b = weights(tmp_path / "straight.safetensors"), weights(tmp_path / "split.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_configuration(cli, tiny_data, tmp_path):
    assert tiny_train(cli, tiny_data, tmp_path / "m.safetensors", "--epochs", "2", "--stop-after", "1").code == 0
    changed = tiny_train(cli, tiny_data, tmp_path / "m.safetensors", "--epochs", "2", "--resume", "--lr", "0.1")
    assert changed.code == 2 and "lr" in changed.stderr
    missing = tiny_train(cli, tiny_data, tmp_path / "other.safetensors", "--epochs", "2", "--resume")
    assert missing.code == 2 and "no resume state" in missing.stderr


# --- bad data stops before training -----------------------------------------------------------------------------


def write_datalist(folder, items, extra=None):
    path = folder / "list.json"
    path.write_text(json.dumps({"training": items, **(extra or {})}))
    return path


def bad_train(cli, datalist, out, *extra):
    return cli("train", "--datalist", datalist, "--features", "4,8", "--epochs", "1", "--steps-per-epoch", "1", *FAST, *extra, out)


def assert_stopped(result, out, *words):
    assert result.code == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("unetseg: error:") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in line, line
    assert not out.exists()


def test_missing_files_stop_with_the_case_and_path(cli, tiny_data, tmp_path):
    datalist = write_datalist(tmp_path, [{"image": str(tiny_data / "case.nrrd"), "label": str(tiny_data / "case_label.nrrd")},
                                          {"image": "nowhere.nrrd", "label": str(tiny_data / "case_label.nrrd")}])
    out = tmp_path / "m.safetensors"
    assert_stopped(bad_train(cli, datalist, out, "--classes", "body,bone"), out, "image of case 'nowhere' not found", "nowhere.nrrd")


def test_image_and_label_of_different_geometry_stop(cli, tiny_data, tmp_path):
    other = make_volume(size=(40, 36, 10))
    sitk.WriteImage(sitk.Cast(other > 0, sitk.sitkUInt8), str(tmp_path / "short_label.nrrd"))
    datalist = write_datalist(tmp_path, [{"image": str(tiny_data / "case.nrrd"), "label": "short_label.nrrd"}])
    out = tmp_path / "m.safetensors"
    assert_stopped(bad_train(cli, datalist, out, "--classes", "body"), out, "different geometry", "40x36x10", "40x36x12")
    shifted = make_volume(origin=(0.0, 0.0, 0.0))
    sitk.WriteImage(sitk.Cast(shifted > 0, sitk.sitkUInt8), str(tmp_path / "shifted_label.nrrd"))
    datalist = write_datalist(tmp_path, [{"image": str(tiny_data / "case.nrrd"), "label": "shifted_label.nrrd"}])
    assert_stopped(bad_train(cli, datalist, out, "--classes", "body"), out, "different geometry", "origin")


def test_label_values_outside_the_class_list_stop(cli, tiny_data, tmp_path):
    datalist = write_datalist(tmp_path, [{"image": str(tiny_data / "case.nrrd"), "label": str(tiny_data / "case_label.nrrd")}])
    out = tmp_path / "m.safetensors"
    assert_stopped(bad_train(cli, datalist, out, "--classes", "body"), out, "outside the class list", "2", "1=body")


def test_segments_outside_the_class_list_stop(cli, chest_ct_path, chest_segmentation_path, tmp_path):
    datalist = write_datalist(tmp_path, [{"image": str(chest_ct_path), "label": str(chest_segmentation_path)}])
    out = tmp_path / "m.safetensors"
    assert_stopped(bad_train(cli, datalist, out, "--classes", "right lung,left lung"), out, "outside the class list", "ribs", "--other-labels background")


def test_malformed_datalists_stop(cli, tmp_path):
    out = tmp_path / "m.safetensors"
    (tmp_path / "broken.json").write_text("{not json")
    assert_stopped(bad_train(cli, tmp_path / "broken.json", out), out, "not valid JSON")
    no_training = write_datalist(tmp_path, [])
    no_training.write_text(json.dumps({"validation": []}))
    assert_stopped(bad_train(cli, no_training, out), out, "no 'training' list")
    no_label = write_datalist(tmp_path, [{"image": "a.nrrd"}])
    assert_stopped(bad_train(cli, no_label, out), out, "needs an 'image' and a 'label'")


def test_folders_are_paired_by_name(tiny_data, tmp_path):
    from UNetSegmentationLib.errors import UserError
    from UNetSegmentationLib.training.data import cases_from_folders

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for name in ("ct01", "ct02"):
        (images / f"{name}.nrrd").write_bytes((tiny_data / "case.nrrd").read_bytes())
    (labels / "ct01.seg.nrrd").write_bytes(b"x")
    (labels / "ct02_label.nrrd").write_bytes(b"x")
    cases = cases_from_folders(images, labels)
    assert [(c.name, c.label.name) for c in cases] == [("ct01", "ct01.seg.nrrd"), ("ct02", "ct02_label.nrrd")]
    (images / "ct03.nii.gz").write_bytes(b"x")
    with pytest.raises(UserError, match="no label .* ct03.nii.gz"):
        cases_from_folders(images, labels)


# --- every architecture, the same command -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_registered_architecture_trains_with_the_same_command(cli, tiny_data, tmp_path, arch):
    out = tmp_path / f"{arch}.safetensors"
    result = cli("train", "--datalist", tiny_data / "datalist.json", "--val-slices", "0.25", "--arch", arch, "--classes", "body,bone",
                 "--features", "4,8,16,32,64", "--crop", "64", "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2", *FAST, out)
    assert result.code == 0, result.stderr
    predicted = cli("predict", "--checkpoint", out, "--progress", "none", "--device", "cpu", tiny_data / "case.nrrd", tmp_path / "out.nrrd")
    assert predicted.code == 0, predicted.stderr


# --- the bundled model -------------------------------------------------------------------------------------------


def test_the_bundled_model_is_small_trained_and_used_by_the_demo(cli, tmp_path):
    from UNetSegmentationLib.model.checkpoint import read_metadata
    from UNetSegmentationLib.cli.demo import bundled_model

    model = bundled_model()
    if model is None:
        pytest.skip("no bundled model in this checkout")
    assert model.stat().st_size < 5_000_000
    metadata = read_metadata(model)
    assert metadata.architecture == "unetplusplus" and len(metadata.classes) == 7
    assert metadata.recommended_depth in metadata.depth_metrics
    assert metadata.training["data"]["held_out_slices"][0]["image"] == "CTChest4.nrrd"
    assert metadata.training["validation"]["dice"] > 0.8  # held-out slices (see chest-ct-unetplusplus.md)
    assert model.with_suffix(".md").is_file()  # its model card
    result = cli("demo", "--output-dir", tmp_path, "--progress", "none")
    assert result.code == 0, result.stderr
    assert "UNTRAINED" not in result.stderr and "trained on the other slices of this same CT" in result.stderr
    assert (tmp_path / "CTChest4-overlay.png").is_file()


def test_training_can_start_from_a_created_checkpoint(cli, tiny_data, tmp_path):
    from conftest import create_checkpoint
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    start = create_checkpoint(tmp_path / "start.safetensors", classes="body,bone", features="4,8,16")
    out = tmp_path / "tuned.safetensors"
    result = cli("train", "--datalist", tiny_data / "datalist.json", "--init", start, "--val-slices", "0.25", "--epochs", "1",
                 "--steps-per-epoch", "2", "--crop", "32", "--batch-size", "2", *FAST, out)
    assert result.code == 0, result.stderr
    tuned, initial = load_checkpoint(out), load_checkpoint(start)
    assert [c.name for c in tuned.metadata.classes] == ["body", "bone"] and tuned.metadata.kwargs == initial.metadata.kwargs
    assert tuned.metadata.training["config"]["init"] == str(start)
    assert not all(torch.equal(tuned.state_dict[k], initial.state_dict[k]) for k in initial.state_dict)
    clash = cli("train", "--datalist", tiny_data / "datalist.json", "--init", start, "--features", "4,8", *FAST, tmp_path / "x.safetensors")
    assert clash.code == 2 and "leave out --features" in clash.stderr


# --- losses ---------------------------------------------------------------------------------------------------------


def test_each_architecture_is_trained_with_its_papers_loss():
    from UNetSegmentationLib.training.losses import loss_kind

    assert loss_kind("unetplusplus") == "unetplusplus"  # ½ CE + Dice per head
    assert loss_kind("unet3plus") == "unet3plus"  # focal + MS-SSIM + IoU per head, BCE on the classifier
    assert {loss_kind(name) for name in ARCHITECTURES if name not in ("unetplusplus", "unet3plus")} == {"dice-ce"}
    assert loss_kind("unet3plus", "dice-ce") == "dice-ce"  # --loss overrides


def logits_for(target: torch.Tensor, channels: int, confidence: float = 12.0) -> torch.Tensor:
    """Logits that are (almost) certain of ``target``."""
    if channels == 1:
        return (target[:, None].float() * 2 - 1) * confidence
    return torch.nn.functional.one_hot(target, channels).permute(0, 3, 1, 2).float() * 2 * confidence - confidence


@pytest.mark.parametrize("kind", ["unetplusplus", "unet3plus", "dice-ce"])
@pytest.mark.parametrize("channels", [1, 3])
def test_losses_vanish_for_perfect_heads_and_average_the_heads_equally(kind, channels):
    from UNetSegmentationLib.networks.blocks import TrainingOutput
    from UNetSegmentationLib.training.losses import SegmentationLoss

    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, channels if channels > 1 else 2, (2, 64, 64), generator=generator)
    target[:, :32] = 0  # some background-only area
    loss = SegmentationLoss(kind, channels, crop=(64, 64))
    perfect, _ = loss(TrainingOutput([logits_for(target, channels)] * 3), target)
    assert float(perfect) < 0.01
    a, b = (torch.randn(2, channels, 64, 64, generator=generator) for _ in range(2))
    both, _ = loss([a, b], target)
    assert float(both) == pytest.approx((float(loss([a], target)[0]) + float(loss([b], target)[0])) / 2, rel=1e-5)


def test_unet3plus_loss_has_its_three_terms_and_trains_the_classification_head():
    from UNetSegmentationLib.networks.blocks import TrainingOutput
    from UNetSegmentationLib.training.losses import SegmentationLoss

    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[0, 20:40, 20:40] = 1  # slice 0 holds the structure, slice 1 does not
    heads = [torch.randn(2, 2, 64, 64, requires_grad=True) for _ in range(5)]
    classification = torch.zeros(2, 1, requires_grad=True)
    total, parts = SegmentationLoss("unet3plus", 2, crop=(64, 64))(TrainingOutput(heads, classification), target)
    assert set(parts) == {"focal", "ms_ssim", "iou", "classification"}
    assert parts["classification"] == pytest.approx(float(torch.log(torch.tensor(2.0))))  # BCE of logit 0
    total.backward()
    assert classification.grad[0, 0] < 0 < classification.grad[1, 0]  # pushed towards "present" for slice 0 only
    assert all(h.grad.abs().sum() > 0 for h in heads)


def test_ms_ssim_uses_as_many_scales_as_the_crop_allows():
    from UNetSegmentationLib.training.losses import ms_ssim_settings

    kernel, weights = ms_ssim_settings((96, 96))
    assert kernel == 7 and len(weights) == 4 and sum(weights) == pytest.approx(1.0)
    assert len(ms_ssim_settings((32, 32))[1]) == 3 and len(ms_ssim_settings((256, 256))[1]) == 5
