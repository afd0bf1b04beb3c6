"""``unetseg evaluate`` on a leave-one-patient-out datalist (issue 24): a case scores only the classes its
labels cover (``labelled_classes``), and ``--fold K`` evaluates the patient a ``train --fold K`` model never saw.

Real data: the slicerio chest CT and its segmentation, twice, as two folds; the bundled model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import write_two_fold_chest_datalist

BUNDLED = Path(__file__).resolve().parent / "Data" / "chest-ct-unetplusplus.safetensors"
ALL_CLASSES = {"ribs", "cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column", "right lung", "left lung", "tissue"}


@pytest.fixture(scope="module")
def datalist(tmp_path_factory, chest_ct_path, chest_segmentation_path) -> Path:
    """Fold 0: the CT with every class labelled; fold 1: the same CT whose labels are said to cover only the lungs
    and the liver (a class the bundled model does not have)."""
    return write_two_fold_chest_datalist(tmp_path_factory.mktemp("lopo"), chest_ct_path, chest_segmentation_path, ["right lung", "left lung", "liver"])


def evaluated(cli, datalist: Path, folder: Path, *options) -> tuple:
    result = cli("evaluate", "--checkpoint", BUNDLED, "--datalist", datalist, "--depth", "2", "--threads", "1", "--output-dir", folder, "--progress", "json", *options)
    assert result.code == 0, result.stderr
    return result, json.loads((folder / "evaluation.json").read_text())


def test_a_class_a_case_does_not_label_is_not_scored_there(cli, datalist, tmp_path):
    result, evaluation = evaluated(cli, datalist, tmp_path / "fold1", "--fold", "1")
    assert {row["volume"] for row in evaluation["rows"]} == {"ct1"}  # only fold 1's case
    assert {row["class"] for row in evaluation["rows"]} == {"right lung", "left lung"}  # no 0, no 1 for the others
    warnings = [e["message"] for e in result.events if e["event"] == "warning"]
    assert any("'liver'" in w and "not classes of this checkpoint" in w for w in warnings)
    lungs = [row["dice"] for row in evaluation["rows"]]
    assert evaluation["summary"]["L2"]["mean_dice"] == pytest.approx(sum(lungs) / len(lungs))


def test_a_case_without_labelled_classes_scores_every_class(cli, datalist, tmp_path):
    _, evaluation = evaluated(cli, datalist, tmp_path / "fold0", "--fold", "0")
    assert {row["volume"] for row in evaluation["rows"]} == {"ct0"}
    assert {row["class"] for row in evaluation["rows"]} == ALL_CLASSES


def test_the_scores_of_a_class_do_not_depend_on_the_others_being_labelled(cli, datalist, tmp_path):
    _, complete = evaluated(cli, datalist, tmp_path / "both", "--section", "training")
    by_case = {(r["volume"], r["class"]): r["dice"] for r in complete["rows"]}
    assert by_case[("ct1", "right lung")] == pytest.approx(by_case[("ct0", "right lung")])
    assert ("ct1", "ribs") not in by_case and ("ct0", "ribs") in by_case


def test_fold_needs_a_datalist_and_a_fold_it_holds(cli, datalist, tmp_path, chest_ct_path, chest_segmentation_path):
    from support import assert_refused

    output = tmp_path / "out"
    assert_refused(cli("evaluate", "--checkpoint", BUNDLED, "--image", chest_ct_path, "--label", chest_segmentation_path, "--fold", "1",
                       "--output-dir", output), output, "--fold 1", "--datalist")
    assert_refused(cli("evaluate", "--checkpoint", BUNDLED, "--datalist", datalist, "--fold", "7", "--output-dir", output), output, "--fold 7", "no case of that fold")


def test_the_lopo_table_scores_the_old_model_on_the_datalists_values_by_class_name(tmp_path):
    """bench/lopo_table.py maps the datalist's label values to an older model's classes by name: the chest
    model's 'tissue' (value 7) must never be scored against the new label 7 (liver)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lopo_table", Path(__file__).resolve().parent.parent / "bench" / "lopo_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"labels": {"0": "background", "1": "ribs", "6": "left lung", "7": "liver", "14": "body"}, "training": []}))
    assert module.label_map_for(datalist, str(BUNDLED)) == "1:ribs,6:left lung"
    datalist.write_text(json.dumps({"labels": {"0": "background", "1": "ribs", "7": "tissue"}, "training": []}))
    assert module.label_map_for(datalist, str(BUNDLED)) is None  # the same names at the same values: nothing to map
    rows = [{"class": "ribs", "dice": 0.5}, {"class": "ribs", "dice": None}, {"class": "ribs", "dice": 0.7}, {"class": "left lung", "dice": None}]
    assert module.per_class(rows) == {"ribs": pytest.approx(0.6), "left lung": None}
