"""Training on several datasets whose labels cover different classes (issue 24, item 2), as a specification.

- A datalist entry may say which classes its labels cover (``labelled_classes``); the others are
  *unknown* in that case, not background. Absent, every class is labelled (as before).
- ``--fold K`` validates on the datalist's cases of fold K and trains on the others (leave one patient
  out with the datalist of ``Resources/Tools/prepare_training_data.py``).
- Each batch carries a ``(B, C)`` mask of every sample's background + unknown channels; the marginal
  loss merges them per sample. With one mask shared by every sample it is exactly the single-list loss.
- The foreground sampler never draws a class from a case that does not label it, and validation scores
  a class only on the volumes that label it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from support import write_tiny_case

REPOSITORY = Path(__file__).resolve().parent.parent

FAST = ("--threads", "1", "--progress", "none", "--device", "cpu")
TINY_RUN = ("--arch", "unetplusplus", "--features", "4,8", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--crop", "32", "--seed", "0")


# --- the loss ---------------------------------------------------------------------------------------------


def single_list_loss(kind: str, logits: torch.Tensor, target: torch.Tensor, unlabelled: list) -> torch.Tensor:
    """The marginal loss as it was with one list for every sample (the specification the per-sample one
    must meet): background + ``unlabelled`` merged by log-sum-exp, the labelled channels as they are."""
    from UNetSegmentationLib.training.losses import SegmentationLoss

    merged = [0, *unlabelled]
    kept = [c for c in range(1, logits.shape[1]) if c not in merged]
    reduced = torch.cat([torch.logsumexp(logits[:, merged], dim=1, keepdim=True), logits[:, kept]], dim=1)
    index = torch.zeros(logits.shape[1], dtype=torch.long)
    index[kept] = torch.arange(1, len(kept) + 1)
    return SegmentationLoss(kind, 1 + len(kept), (32, 32))(reduced, index[target])[0]


@pytest.mark.parametrize("kind", ["unetplusplus", "dice-ce", "unet3plus"])
def test_with_one_mask_shared_by_every_sample_the_loss_is_exactly_the_single_list_loss(kind):
    from UNetSegmentationLib.training.partial_labels import MarginalLoss, merged_mask

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 32, 32, generator=generator)
    target = torch.randint(0, 5, (3, 32, 32), generator=generator)
    loss = MarginalLoss(kind, 5, unlabelled=[1, 3], crop=(32, 32))
    shared = torch.tensor([merged_mask(5, [1, 3])] * 3)
    expected = single_list_loss(kind, logits, target, [1, 3])
    assert torch.equal(loss(logits, target)[0], expected)
    assert torch.equal(loss(logits, target, merged=shared)[0], expected)
    gradients = []
    for merged in (None, shared):
        copy = logits.clone().requires_grad_(True)
        loss(copy, target, merged=merged)[0].backward()
        gradients.append(copy.grad)
    reference = logits.clone().requires_grad_(True)
    single_list_loss(kind, reference, target, [1, 3]).backward()
    assert torch.equal(gradients[0], reference.grad) and torch.equal(gradients[1], reference.grad)


def two_cases_batch():
    """Sample 0 from a case that labels 'liver' (channel 1) only, sample 1 from one that labels 'spleen'
    (channel 2) only: each one's other organ is unknown. Everywhere the target is background."""
    from UNetSegmentationLib.training.partial_labels import merged_mask

    merged = torch.tensor([merged_mask(3, [2]), merged_mask(3, [1])])
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[0, 2:6, 2:6] = 1  # liver in the first case's labels
    target[1, 9:13, 9:13] = 2  # spleen in the second's
    return merged, target


@pytest.mark.parametrize("kind", ["unetplusplus", "dice-ce"])
def test_a_cases_unknown_class_is_never_taught_as_background_but_the_other_cases_is(kind):
    from UNetSegmentationLib.training.partial_labels import MarginalLoss

    merged, target = two_cases_batch()
    loss = MarginalLoss(kind, 3, unlabelled=[], crop=(16, 16))
    # the model unsure everywhere: the gradient on 'spleen' at a background pixel of each sample
    logits = torch.zeros(2, 3, 16, 16, requires_grad=True)
    loss(logits, target, merged=merged)[0].backward()
    background, spleen = target == 0, logits.grad[:, 2]
    assert (spleen[0][background[0]] <= 0).all()  # unknown in case 0: 'background or spleen' is pushed up together, never spleen down
    assert (spleen[1][background[1]] > 0).all()  # labelled in case 1: background there says "not spleen", so spleen is pushed down


@pytest.mark.parametrize("kind", ["unetplusplus", "dice-ce", "unet3plus"])
def test_how_background_and_an_unknown_class_share_their_probability_gets_no_gradient_in_that_case_only(kind):
    """The loss sees a case's unknown class only through the merged "background or unknown" probability:
    moving mass between background and 'spleen' in case 0 (the split ``t``) changes nothing, in case 1 it does."""
    from UNetSegmentationLib.training.partial_labels import MarginalLoss

    merged, target = two_cases_batch()
    loss = MarginalLoss(kind, 3, unlabelled=[], crop=(16, 16))
    base = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    split = torch.zeros(2, 1, 16, 16, requires_grad=True)
    joined = torch.logsumexp(base[:, [0, 2]], dim=1, keepdim=True)  # fixed: only the split between the two moves
    logits = torch.cat([joined + torch.nn.functional.logsigmoid(split), base[:, 1:2], joined + torch.nn.functional.logsigmoid(-split)], dim=1)
    loss(logits, target, merged=merged)[0].backward()
    assert torch.count_nonzero(split.grad[0]) == 0  # case 0: spleen unknown, not a single pixel's split is taught
    assert torch.count_nonzero(split.grad[1]) > 0  # case 1 labels spleen: it is


def test_the_distillation_keeps_each_samples_own_merged_group():
    from UNetSegmentationLib.training.partial_labels import MarginalLoss

    merged, target = two_cases_batch()
    loss = MarginalLoss("unetplusplus", 3, unlabelled=[], crop=(16, 16))
    teacher = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert float(loss.distillation(teacher, teacher, merged)) == pytest.approx(0.0, abs=1e-6)
    drifted = teacher.clone()
    drifted[1, 2] -= 3.0  # spleen drifts in case 1, where it is labelled: nothing to distil there
    assert float(loss.distillation(drifted, teacher, merged)) == pytest.approx(0.0, abs=1e-6)
    drifted[0, 2] -= 3.0  # and in case 0, where it is unknown: the base model's split is taught
    assert float(loss.distillation(drifted, teacher, merged)) > 0.1
    total, parts = loss(drifted, target, drifted, merged=merged)
    assert parts["distillation"] == pytest.approx(0.0, abs=1e-6) and np.isfinite(float(total))


# --- the sampler and validation --------------------------------------------------------------------------------


def volume(name: str, targets: np.ndarray, unlabelled=()):
    """A prepared volume of ``targets``' shape (the image a copy of the targets), every slice for training."""
    from UNetSegmentationLib.training.volumes import PreparedVolume

    return PreparedVolume(name, Path(f"{name}.nrrd"), targets.astype(np.float32), targets, lambda x: np.asarray(x, dtype=np.float32), None,
                          (3.0, 1.0, 1.0), train_slices=np.arange(targets.shape[0]), val_slices=np.arange(targets.shape[0]), unlabelled=tuple(unlabelled))


def labelled_pair():
    """Case 'liver-only' labels class 1 (its class-2 voxels are an unreliable drawing, unknown); 'both' labels both."""
    first = np.zeros((4, 16, 16), dtype=np.uint8)
    first[:, 2:6, 2:6], first[:, 9:12, 9:12] = 1, 2
    second = np.zeros((4, 16, 16), dtype=np.uint8)
    second[:, 3:7, 3:7], second[:, 10:13, 10:13] = 1, 2
    return volume("liver-only", first, unlabelled=(2,)), volume("both", second)


def test_the_sampler_draws_a_class_only_from_cases_that_label_it_and_returns_each_samples_mask():
    from UNetSegmentationLib.training.sampling import AugmentOptions, SliceSampler

    first, second = labelled_pair()
    sampler = SliceSampler([first, second], context=0, crop=(16, 16), class_count=2, foreground=1.0,
                           augment=AugmentOptions(rotate=0, scale=0, intensity=0))
    assert {int(v) for v, _ in sampler.class_slices[2]} == {1}  # class 2 only from 'both'
    assert {int(v) for v, _ in sampler.class_slices[1]} == {0, 1}
    sampler.set_random_state(0)
    inputs, targets, merged = sampler.batch(16)
    assert merged.shape == (16, 3) and merged.dtype == bool
    assert len({tuple(row) for row in merged}) == 2  # samples of both cases
    for image, row in zip(inputs[:, 0], merged):  # each image is its case's targets: 'liver-only' has the liver at 2:6, 'both' at 3:7
        assert tuple(row) == ((True, False, True) if image[2, 2] == 1 else (True, False, False))


def test_validation_scores_a_class_only_on_the_volumes_that_label_it(monkeypatch):
    """Both volumes are predicted with both classes where 'both' has them: on 'liver-only' the class-2 voxels
    of its labels disagree, but class 2 is unknown there, so its Dice is that of 'both' alone (1.0, not 0.5)."""
    from UNetSegmentationLib.model.metadata import ClassInfo
    from UNetSegmentationLib.training import validation

    first, second = labelled_pair()
    predictions = {id(first.slices): np.where(first.targets == 1, 1, 0), id(second.slices): second.targets}
    monkeypatch.setattr(validation, "validated_depths", lambda metadata: [None])
    monkeypatch.setattr(validation, "SlicePredictor", lambda *args: None)
    monkeypatch.setattr(validation, "predict_slices", lambda predictor, slices, *rest: predictions[id(slices)])
    metadata = SimpleNamespace(classes=[ClassInfo("liver", 1, (0.8, 0.4, 0.3)), ClassInfo("spleen", 2, (0.6, 0.2, 0.6))])
    result = validation.validate(torch.nn.Identity(), metadata, [first, second], torch.device("cpu"), 4)
    assert result.by_depth[None][1].tolist() == [1.0, 1.0]
    first.unlabelled = ()  # had 'liver-only' labelled class 2, its disagreement would count
    result = validation.validate(torch.nn.Identity(), metadata, [first, second], torch.device("cpu"), 4)
    assert result.by_depth[None][1].tolist() == [1.0, 0.5]


# --- the datalist field and --fold -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_cases(tmp_path_factory):
    """One synthetic CT, labelled three ways: 'a' (fold 0) body only, 'b' (fold 0) bone only, 'c' (fold 1) bone only."""
    folder = write_tiny_case(tmp_path_factory.mktemp("partial"))
    labels = sitk.ReadImage(str(folder / "case_label.nrrd"))
    array = sitk.GetArrayFromImage(labels)
    for name, keep in (("body_only", 1), ("bone_only", 2)):
        image = sitk.GetImageFromArray(np.where(array == keep, array, 0).astype(np.uint8))
        image.CopyInformation(labels)
        sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
    items = [
        {"name": "a", "image": "case.nrrd", "label": "body_only.nrrd", "patient": "p0", "labelled_classes": ["body"], "fold": 0},
        {"name": "b", "image": "case.nrrd", "label": "bone_only.nrrd", "patient": "p0", "labelled_classes": ["bone"], "fold": 0},
        {"name": "c", "image": "case.nrrd", "label": "bone_only.nrrd", "patient": "p1", "labelled_classes": ["bone"], "fold": 1},
    ]
    (folder / "partial.json").write_text(json.dumps({"training": items}))
    return folder


def write_list(folder: Path, items, name="list.json", **extra) -> Path:
    path = folder / name
    path.write_text(json.dumps({"training": items, **extra}))
    return path


def test_the_datalist_says_per_case_which_classes_its_labels_cover_and_its_fold(three_cases):
    from UNetSegmentationLib.training.cases import cases_from_datalist, split_fold

    cases = cases_from_datalist(three_cases / "partial.json")
    assert [(c.name, c.labelled, c.fold) for c in cases] == [("a", ("body",), 0), ("b", ("bone",), 0), ("c", ("bone",), 1)]
    training, validation = split_fold(cases, 1, "the datalist")
    assert [c.name for c in training] == ["a", "b"] and [c.name for c in validation] == ["c"]
    plain = cases_from_datalist(three_cases / "datalist.json")  # no field: every class labelled, no fold
    assert plain[0].labelled is None and plain[0].fold is None


def test_the_prepared_datalists_fields_are_read_as_the_preparation_tool_writes_them(tmp_path):
    sys.path.insert(0, str(REPOSITORY / "Resources" / "Tools"))
    try:
        from training_data_scheme import CaseRecord, build_datalist
    finally:
        sys.path.remove(str(REPOSITORY / "Resources" / "Tools"))
    from UNetSegmentationLib.training.cases import cases_from_datalist, split_fold

    for name in ("x.nii.gz", "y.nii.gz", "z.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    records = [CaseRecord(name="x", image="x.nii.gz", label="y.nii.gz", patient="p-x", labelled_classes=("liver", "ribs")),
               CaseRecord(name="z", image="z.nii.gz", label="y.nii.gz", patient="p-z", labelled_classes=("heart",))]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(build_datalist(records, "test")))
    cases = cases_from_datalist(path)
    assert [(c.name, c.labelled, c.fold) for c in cases] == [("x", ("ribs", "liver"), 0), ("z", ("heart",), 1)]
    assert [[c.name for c in part] for part in split_fold(cases, 0, "d")] == [["z"], ["x"]]


@pytest.mark.parametrize("entry, fold, words", [
    ({"labelled_classes": ["body", "liver"]}, None, ["case 'a'", "'liver'", "not among the classes", "body, bone"]),
    ({"labelled_classes": "body"}, None, ["'labelled_classes' must be a non-empty list", "item #1"]),
    ({"labelled_classes": []}, None, ["'labelled_classes' must be a non-empty list"]),
    ({"fold": -1}, None, ["'fold' must be a whole number"]),
    ({}, 0, ["--fold 0", "no 'fold' for case(s) 'a'"]),
    ({"fold": 0}, 3, ["--fold 3", "no case of that fold", "folds: 0"]),
])
def test_a_bad_labelled_classes_or_fold_stops_with_one_message(cli, three_cases, tmp_path, entry, fold, words):
    items = [{"name": "a", "image": str(three_cases / "case.nrrd"), "label": str(three_cases / "body_only.nrrd"), **entry}]
    out = tmp_path / "m.safetensors"
    result = cli("train", "--datalist", write_list(tmp_path, items), "--classes", "body,bone", *(("--fold", str(fold)) if fold is not None else ()), *TINY_RUN, *FAST, out)
    assert result.code == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert len(result.stderr.strip().splitlines()) == 1 and line.startswith("unetseg: error:"), result.stderr
    assert all(word in line for word in words), line
    assert not out.exists()


def test_fold_goes_with_a_datalist_without_a_validation_list(cli, three_cases, tmp_path):
    out = tmp_path / "m.safetensors"
    alone = cli("train", "--image", three_cases / "case.nrrd", "--label", three_cases / "case_label.nrrd", "--fold", "0", *TINY_RUN, *FAST, out)
    assert alone.code == 2 and "--fold" in alone.stderr and "--datalist" in alone.stderr
    items = json.loads((three_cases / "partial.json").read_text())["training"]
    both = write_list(three_cases, items[:2], name="with_validation.json", validation=items[2:])
    doubled = cli("train", "--datalist", both, "--fold", "1", *TINY_RUN, *FAST, out)
    assert doubled.code == 2 and "already has a 'validation' list" in doubled.stderr
    assert not out.exists()


def test_a_run_on_cases_labelling_disjoint_classes_keeps_each_cases_unknowns_and_validates_the_held_out_fold(cli, three_cases, tmp_path):
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    out = tmp_path / "m.safetensors"
    result = cli("train", "--datalist", three_cases / "partial.json", "--fold", "1", "--classes", "body,bone", *TINY_RUN, "--threads", "1", "--device", "cpu", "--progress", "json", out)
    assert result.code == 0, result.stderr
    assert "case 'a': unknown, not background (not in its labelled_classes): bone" in result.stdout + result.stderr
    assert "case 'b': unknown, not background (not in its labelled_classes): body" in result.stdout + result.stderr
    training = load_checkpoint(out).metadata.training
    assert training["data"]["fold"] == 1
    assert [c["case"] for c in training["data"]["training"]] == ["a", "b"] and [c["case"] for c in training["data"]["validation"]] == ["c"]
    per_class = next(iter(training["validation"]["by_depth"].values()))["per_class"]
    assert per_class["body"] is None and per_class["bone"] is not None  # 'c' labels no body: not scored there


def test_a_case_may_name_its_held_out_slices_and_the_run_holds_out_exactly_those(cli, three_cases, tmp_path):
    """The shipped model is scored on the very slices an older model held out (issue 24): a datalist case's
    ``held_out_slices`` replace ``--val-slices``' blocks for that case; the neighbours' reach is a gap."""
    from UNetSegmentationLib.model.checkpoint import load_checkpoint
    from UNetSegmentationLib.training.dataset import named_hold_out

    items = [{"name": "a", "image": "case.nrrd", "label": "case_label.nrrd", "held_out_slices": "2-3,9"},
             {"name": "b", "image": "case.nrrd", "label": "case_label.nrrd"}]
    out = tmp_path / "m.safetensors"
    result = cli("train", "--datalist", write_list(three_cases, items, name="named.json"), "--val-slices", "0.2", *TINY_RUN, *FAST, out)
    assert result.code == 0, result.stderr
    held = {h["case"]: h["slices"] for h in load_checkpoint(out, weights=False).metadata.training["data"]["held_out_slices"]}
    assert held["a"] == [2, 3, 9] and held["b"] != [2, 3, 9]  # 'b' keeps --val-slices' blocks
    volume = SimpleNamespace(slice_count=12, name="a", axis_name="k")
    train, val = named_hold_out(volume, "2-3,9", gap=1)
    assert list(val) == [2, 3, 9] and list(train) == [0, 5, 6, 7, 11]


@pytest.mark.parametrize("held_out, words", [(7, ["'held_out_slices' must be slice ranges as text"]), ("4-x", ["'held_out_slices'", "4-x"]),
                                             ("0-99", ["'held_out_slices' of case 'a'", "99"])])
def test_bad_held_out_slices_stop_with_one_message(cli, three_cases, tmp_path, held_out, words):
    items = [{"name": "a", "image": str(three_cases / "case.nrrd"), "label": str(three_cases / "case_label.nrrd"), "held_out_slices": held_out}]
    out = tmp_path / "m.safetensors"
    result = cli("train", "--datalist", write_list(tmp_path, items), *TINY_RUN, *FAST, out)
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(word in result.stderr for word in words), result.stderr
    assert not out.exists()


# --- a short run on the prepared data --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_short_run_on_two_prepared_volumes_scores_the_held_out_patient_only_on_its_labelled_classes(cli, tmp_path):
    """Two volumes of the prepared training data (Resources/Tools/prepare_training_data.py, from its download
    cache: skipped where the cache is empty): train on example_ct_sm (14 classes), validate on the slicerio
    chest CT (6 classes) with --fold 0."""
    data = tmp_path / "td"
    prepared = subprocess.run([sys.executable, str(REPOSITORY / "Resources" / "Tools" / "prepare_training_data.py"), "--output", str(data), "--offline"],
                              capture_output=True, text=True)
    if prepared.returncode != 0:
        pytest.skip(f"the training data's download cache is empty: {prepared.stderr.strip()[-200:]}")
    datalist = json.loads((data / "datalist.json").read_text())
    two = [item for item in datalist["training"] if item["name"] in ("ctchest4", "example_ct_sm")]
    fold = next(item["fold"] for item in two if item["name"] == "ctchest4")
    path = write_list(data, two, name="two.json")
    classes = ",".join(c["name"] for c in json.loads((data / "classes.json").read_text()))
    out = tmp_path / "m.safetensors"
    result = cli("train", "--datalist", path, "--fold", str(fold), "--classes", classes, "--arch", "unetplusplus", "--features", "4,8,16",
                 "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--crop", "64", "--seed", "0", *FAST, out)
    assert result.code == 0, result.stderr
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    record = load_checkpoint(out).metadata.training["validation"]
    per_class = next(iter(record["by_depth"].values()))["per_class"]
    for name in ("liver", "spleen", "aorta", "heart", "stomach", "body"):  # the chest CT's labels do not cover them
        assert per_class[name] is None, name
    assert per_class["ribs"] is not None and per_class["left lung"] is not None
    shutil.rmtree(data)
