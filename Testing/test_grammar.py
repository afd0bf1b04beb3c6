"""The shared grammars of the command line and the panel (UNetSegmentationLib/grammar): slice ranges,
axis names, class lists and ``--label-map``. Bounded and numpy-free."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.grammar.axis_names import axis_name, parse_axis
from UNetSegmentationLib.grammar.class_lists import format_label_map, parse_class_names, parse_label_map, parse_partial_classes
from UNetSegmentationLib.grammar.slice_ranges import MAX_SLICE_INDEX, check_slice_ranges, format_slice_ranges, parse_slice_ranges


def test_slice_ranges_are_sorted_distinct_indices():
    assert parse_slice_ranges(" 12-14, 40,13", 50, option="--train-slices") == [12, 13, 14, 40]
    assert parse_slice_ranges("0", 1, option="--slices") == [0]


@pytest.mark.parametrize("text, message", [
    ("0-99999999999", "beyond the volume's 100 slices"),  # issue 23 HIGH 3: OOM-killed before
    ("0-100", "slice 100 is beyond the volume's 100 slices"),
    ("6-4", "runs backwards"),
    ("1-", "no slice number or range"),
    ("-3", "no slice number or range"),
    ("12 to 18", "no slice number or range"),
    ("٣", "no slice number or range"),  # digits other than 0-9
    ("", "give slice numbers"),
    ("1," * 6000, "characters long"),
])
def test_bad_slice_ranges_are_one_message(text, message):
    with pytest.raises(UserError, match=message):
        parse_slice_ranges(text, 100, option="--train-slices")


def test_without_a_volume_the_hard_cap_bounds_every_range():
    assert check_slice_ranges("0-10", None, option="--slices") == [(0, 10)]
    with pytest.raises(UserError, match=f"largest slice number accepted \\({MAX_SLICE_INDEX}\\)"):
        check_slice_ranges(f"0-{MAX_SLICE_INDEX + 1}", None, option="--slices")


def test_format_is_read_back_as_the_same_slices():
    slices = [0, 1, 2, 5, 7, 8, 9, 30]
    text = format_slice_ranges(slices)
    assert text == "0-2,5,7-9,30"
    assert parse_slice_ranges(text, 31, option="x") == slices


def test_refused_range_bombs_stay_small():
    """Peak RSS of a process refusing the bombs of issue 23 (HIGH 3) stays far below 200 MB."""
    script = textwrap.dedent("""
        from UNetSegmentationLib.errors import UserError
        from UNetSegmentationLib.grammar.slice_ranges import parse_slice_ranges
        for text in ("0-99999999999", "0-" + "9" * 5000, ",".join(["0-99999999"] * 900)):
            for count in (None, 120):
                try:
                    parse_slice_ranges(text, count, option="--train-slices")
                except UserError:
                    pass
                else:
                    raise SystemExit("accepted " + text[:20])
        # VmHWM: this process's peak since exec (ru_maxrss would carry the forking pytest's peak over)
        print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(result.stdout.strip()) < 200 * 1024  # kB


def test_axis_names():
    assert [parse_axis(t) for t in ("auto", None, "i", "J", "k", "0", "2", 1)] == [None, None, 0, 1, 2, 0, 2, 1]
    assert [axis_name(a) for a in (None, 0, 1, 2)] == ["auto", "i", "j", "k"]
    with pytest.raises(UserError, match="--axis must be auto, i, j or k"):
        parse_axis("z")


def test_label_map_pairs():
    assert parse_label_map("3:left lung, 007:ribs,Liver seg:liver") == {"3": "left lung", "7": "ribs", "Liver seg": "liver"}
    assert format_label_map({"3": "left lung", "7": "ribs"}) == "3:left lung,7:ribs"


@pytest.mark.parametrize("text, message", [
    ("0:ribs", "background is no class"),  # issue 23 item 10: the tuned model called air "ribs"
    ("00:ribs", "background is no class"),
    ("²:ribs", "neither a label value"),  # issue 23 item 7: a traceback before
    ("3:ribs,3:lung", "maps '3' twice"),
    ("ribs", "USERVALUE:CLASS"),
    (":ribs", "USERVALUE:CLASS"),
])
def test_bad_label_maps_are_one_message(text, message):
    with pytest.raises(UserError, match=message):
        parse_label_map(text)


def test_class_lists():
    assert parse_class_names(" liver, spleen ") == ["liver", "spleen"]
    assert parse_class_names(None) is None
    with pytest.raises(UserError, match="duplicate class name 'Liver'"):
        parse_class_names("liver,Liver")
    with pytest.raises(UserError, match="non-empty"):
        parse_class_names("liver,,spleen")
    assert parse_partial_classes(None) == "auto" and parse_partial_classes("NONE") == "none"
    assert parse_partial_classes("ribs, liver") == ["ribs", "liver"]


def test_the_grammar_imports_no_numpy():
    """The Slicer panel checks what the user typed in its GUI process with these very functions."""
    code = "import sys; import UNetSegmentationLib.grammar.slice_ranges, UNetSegmentationLib.grammar.axis_names, UNetSegmentationLib.grammar.class_lists; print('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
