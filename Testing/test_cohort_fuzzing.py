"""Property-based fuzzing of a cohort's inputs (issue 23): whatever a CSV, a datalist or a ``--name`` rule holds,
discovery and planning give cases whose outputs lie inside the output folder, or refuse a case, or the whole
input with one :class:`UserError`; never another exception, never an unbounded string. Bounded by default;
``UNETSEG_FUZZ_EXAMPLES=5000`` makes it a long random run (docs/hardening.md)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from support import BOUNDED, make_volume, write
from UNetSegmentationLib.cohort.case_names import MAX_NAME_BYTES, check_name_rule
from UNetSegmentationLib.cohort.discovery import find_inputs, plan_cases
from UNetSegmentationLib.errors import UserError

#: text with the characters that matter to paths and formats
PATHISH = st.text(alphabet=st.sampled_from(list("ab./\\:{}[]!<>=^0123456789dsx_- \x00\n\t\x1bé") + ["\udce9", "名"]), max_size=40)


def _inside(path: Path, folder: Path) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)


@BOUNDED
@given(rule=st.one_of(PATHISH, st.builds(lambda a, b: "{" + a + "}" + b, PATHISH, st.sampled_from([".nrrd", ".nii.gz", ".dcm", ""]))))
def test_any_name_rule_is_refused_with_one_message_or_gives_short_plain_names(rule):
    try:
        check_name_rule(rule)
    except UserError as error:
        assert len(str(error)) < 1000
        return
    example = rule.format(name="case", stem="case", index=1)
    assert len(example) < len(rule) + 400 and "/" not in example


def _planned(folder: Path, inputs, rule: str):
    try:
        return plan_cases(inputs, folder, rule)
    except UserError:
        return []


@BOUNDED
@given(names=st.lists(PATHISH, min_size=1, max_size=4), rule=st.sampled_from(["{name}.nrrd", "{index}_{name}.nii.gz", "{name:>10}.nrrd", "{stem}-{name}.seg.nrrd"]))
def test_any_csv_name_column_gives_outputs_inside_the_folder_or_refused_cases(tmp_path_factory, names, rule):
    folder = tmp_path_factory.mktemp("csv")
    write(make_volume(size=(8, 8, 2)), folder / "v.nrrd")
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["image", "name"])
    for name in names:
        writer.writerow(["v.nrrd", name.encode("utf-8", "surrogatepass").decode("utf-8", "replace")])
    (folder / "list.csv").write_text(text.getvalue(), encoding="utf-8")
    (folder / "out").mkdir()
    try:
        inputs = find_inputs([str(folder / "list.csv")])
    except UserError:
        return
    for case in _planned(folder / "out", inputs, rule):
        if case.refusal is None:
            assert _inside(case.output, folder / "out") and case.output.parent == folder / "out", case
            assert len(case.output.name.encode("utf-8")) <= MAX_NAME_BYTES
        else:
            assert isinstance(case.refusal, str) and case.refusal


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), PATHISH),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(PATHISH, children, max_size=4)),
    max_leaves=20,
)


@BOUNDED
@given(data=st.one_of(JSON, st.dictionaries(st.sampled_from(["test", "training", "x"]), st.lists(st.one_of(PATHISH, st.fixed_dictionaries({"image": PATHISH}), JSON), max_size=4))))
def test_any_datalist_gives_cases_or_one_message(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("datalist")
    write(make_volume(size=(8, 8, 2)), folder / "v.nrrd")
    (folder / "list.json").write_text(json.dumps(data), encoding="utf-8", errors="surrogatepass")
    try:
        inputs = find_inputs([str(folder / "list.json")])
    except UserError as error:
        assert "\n" not in str(error).strip() or len(str(error)) < 2000
        return
    (folder / "out").mkdir()
    for case in _planned(folder / "out", inputs, "{name}.nrrd"):
        assert case.refusal is not None or _inside(case.output, folder / "out")


@BOUNDED
@given(content=st.binary(max_size=300))
def test_any_csv_bytes_give_cases_or_one_message(tmp_path_factory, content):
    folder = tmp_path_factory.mktemp("csvbytes")
    write(make_volume(size=(8, 8, 2)), folder / "v.nrrd")
    (folder / "list.csv").write_bytes(b"image,name\nv.nrrd," + content)
    try:
        inputs = find_inputs([str(folder / "list.csv")])
    except UserError:
        return
    (folder / "out").mkdir()
    for case in _planned(folder / "out", inputs, "{name}.nrrd"):
        assert case.refusal is not None or _inside(case.output, folder / "out")
