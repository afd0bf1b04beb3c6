"""The JSON-lines event schema (UNetSegmentationLib/protocol/events.py): one typed payload per event kind
and command, and every command's real events fit it, so a reader (the runner, the Slicer panel) may rely
on each listed field's name and type. The wire format is plain JSON, version 1, as before."""

from __future__ import annotations

import json

import pytest

from support import write_tiny_case
from UNetSegmentationLib.protocol.events import (
    COHORT, DONE_PAYLOADS, EVALUATE, PREDICT, REFINE, TRAIN, VERSION, check_event, encode, make_event, parse_event,
)

TINY_TRAIN = ("--classes", "body,bone", "--features", "4,8", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--crop", "32", "--device", "cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_case(tmp_path_factory.mktemp("events"))


def schema_problems(result) -> list:
    """Every event of a ``--progress json`` run checked against the schema of the run's command."""
    assert result.code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [e["event"] for e in events].count("start") == 1 and events[-1]["event"] == "done"
    command = next(e for e in events if e["event"] == "start")["command"]
    return [(command, problem) for event in events for problem in check_event(event, command)]


def test_every_command_speaks_the_schema(cli, tiny, small_unet_one_class, tmp_path):
    from refine_support import write_tiny_interactive_checkpoint

    trained = tmp_path / "tiny.safetensors"
    interactive = write_tiny_interactive_checkpoint(tmp_path / "interactive.safetensors")
    (tmp_path / "clicks.json").write_text(json.dumps([{"ijk": [20, 18, 6], "positive": True}]))
    runs = {
        PREDICT: cli("predict", "--checkpoint", small_unet_one_class, "--progress", "json", "--review-list", tmp_path / "review.json",
                     tiny / "case.nrrd", tmp_path / "labels.nrrd"),
        TRAIN: cli("train", "--datalist", tiny / "datalist.json", *TINY_TRAIN, "--progress", "json", trained),
        EVALUATE: cli("evaluate", "--checkpoint", small_unet_one_class, "--image", tiny / "case.nrrd", "--label", tiny / "case_label.nrrd",
                      "--other-labels", "background", "--output-dir", tmp_path / "evaluation", "--progress", "json"),
        COHORT: cli("predict", "--checkpoint", small_unet_one_class, "--progress", "json", "--output-dir", tmp_path / "cohort", tiny / "case.nrrd"),
        REFINE: cli("refine", "--checkpoint", interactive, "--clicks", tmp_path / "clicks.json", "--progress", "json", tiny / "case.nrrd", tmp_path / "object.nrrd"),
    }
    assert {command: schema_problems(result) for command, result in runs.items()} == {command: [] for command in runs}
    done = {command: result.events[-1] for command, result in runs.items()}
    assert done[PREDICT]["output"] == str(tmp_path / "labels.nrrd") and done[PREDICT]["review"]
    assert done[TRAIN]["checkpoint"] == str(trained) and done[COHORT]["done"] == 1
    assert set(DONE_PAYLOADS) == set(runs)


def test_the_checker_names_what_departs_from_the_schema():
    assert check_event({"event": "start", "version": VERSION, "command": "predict", "total": 3, "unit": "slice"}) == []
    assert check_event({"event": "start", "command": "predict", "total": "3", "unit": "voxel"}) == [
        "start: missing 'version'", "start: 'total' is '3', not int", "start: unit 'voxel' is none of slice, step, case, click"]
    assert check_event({"event": "done", "output": 3, "review": [{"slice": 1, "axis": "k", "score": 0.5}]}, PREDICT) == ["done: 'output' is 3, not str"]
    assert check_event({"event": "done", "review": [{"slice": "1"}]}, PREDICT)  # a review entry without its fields
    assert check_event({"event": "progress", "done": 1, "total": 2, "unit": "case", "rate_per_s": 1, "eta_s": None, "extra": object()}) == []
    assert check_event({"event": "exit"}) and check_event("text")


def test_the_wire_format_is_plain_json_lines_and_version_one():
    """What readers written against version 1 (the panel, scripts) read stays as it was."""
    line = encode(make_event("start", command="predict", total=2, unit="slice"))
    assert json.loads(line) == {"event": "start", "version": 1, "command": "predict", "total": 2, "unit": "slice"}
    assert parse_event("not json") == {"event": "log", "message": "not json"} and parse_event("  ") is None
