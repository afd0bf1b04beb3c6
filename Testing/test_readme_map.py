"""The README's map of the engine ("How the engine is layered") matches the code: every engine file is
named in it, under its folder, and every file it names exists; every file and function its table of
decisions names as the one place of a decision exists; and every test the documents cite exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("UNetSegmentationLib", "UNetSegmentationSlicer")


def map_block() -> str:
    """The code block of the README's "How the engine is layered" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## How the engine is layered", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def files_named_in_the_map() -> set:
    """``folder/file.py`` for every file the map names: a line's folder is the last ``name/`` that opens
    a line above it (``UNetSegmentationLib/`` itself is the package root); ``folder/file.py`` written
    out names that file wherever it stands."""
    named, folder = set(), ""
    for line in map_block().splitlines():
        heading = re.match(r"^(\s*)([A-Za-z_]+)/", line)
        if heading:
            folder = "" if heading.group(2) == "UNetSegmentationLib" else heading.group(2)
        for explicit, name in re.findall(r"(?:\b([A-Za-z_]+)/)?\b([a-z_0-9]+\.py)\b", line):
            where = explicit or folder
            named.add(f"{where}/{name}" if where else name)
    return named


def engine_files() -> set:
    files = set()
    for package in PACKAGES:
        root = REPO / "UNetSegmentation" / package
        for path in root.rglob("*.py"):
            if path.name in ("__init__.py", "__main__.py") or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(root)
            files.add(relative.as_posix() if package == "UNetSegmentationLib" else f"{package}/{path.name}")
    return files


def decision_rows() -> list:
    """``(decision, made in, asked by)`` for each row of the table of decisions under the map."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## How the engine is layered", 1)[1].split("\n## ", 1)[0]
    table = section.split("```", 2)[2].split("**Checkpoints**", 1)[0]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith(("| decision", "| ---"))]


def test_every_decision_in_the_readme_is_made_in_a_file_and_function_that_exist():
    rows = decision_rows()
    assert len(rows) >= 20 and all(len(row) == 3 for row in rows)
    engine = REPO / "UNetSegmentation" / "UNetSegmentationLib"
    for decision, made_in, _ in rows:
        places = re.findall(r"`([a-z_]+/(?:[a-z_0-9]+\.py)?)`(?: \(`(\w+)`\))?", made_in)
        assert places, f"{decision!r} names no file"
        for path, function in places:
            assert (engine / path).exists(), f"{decision!r}: {path} does not exist"
            if function:
                assert re.search(rf"^\s*def {function}\(", (engine / path).read_text(encoding="utf-8"), re.M), f"{decision!r}: no {function} in {path}"


def test_every_engine_file_is_on_the_readme_map():
    missing = sorted(engine_files() - files_named_in_the_map())
    assert not missing, f"README.md's 'How the engine is layered' does not name: {missing}"


def test_every_file_on_the_readme_map_exists():
    stale = sorted(files_named_in_the_map() - engine_files())
    assert not stale, f"README.md's 'How the engine is layered' names files that do not exist: {stale}"


def test_every_test_the_documents_name_exists_in_the_file_they_name():
    """docs/hardening.md, README.md and BENCHMARKS.md cite tests as ``test_file.py::test_name``: each must be there."""
    import ast

    defined = {
        path.name: {node.name for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(node, ast.FunctionDef)}
        for path in (REPO / "Testing").glob("test_*.py")
    }
    cited = [
        (document, file, name)
        for document in ("docs/hardening.md", "README.md", "BENCHMARKS.md")
        for file, name in re.findall(r"(test_[a-z_0-9]+\.py)::(test_[A-Za-z_0-9]+)", (REPO / document).read_text(encoding="utf-8"))
    ]
    assert len(cited) > 100
    missing = [c for c in cited if c[2] not in defined.get(c[1], ())]
    assert not missing, f"documents cite tests that do not exist: {missing}"
