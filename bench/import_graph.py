"""The engine's import graph, between files and between folders: cycles, Slicer imports, sizes.

Reads every ``.py`` file of ``UNetSegmentation/UNetSegmentationLib`` (the engine), of
``UNetSegmentation/UNetSegmentationSlicer`` (the Slicer-side helpers, when present) and the Slicer
module file ``UNetSegmentation/UNetSegmentation.py`` with :mod:`ast` (nothing is imported or run),
and builds a directed graph with an edge A → B whenever A imports B:

- every ``import`` statement counts, also inside functions (a lazy import still needs B when it
  runs, and a cycle that only works because its imports are lazy is still a cycle);
- ``from pkg import name`` points at the module ``pkg.name`` when there is one, else at ``pkg``;
  relative imports are resolved against the importing file's package;
- ``importlib.import_module("literal")`` and a ``module="literal"`` keyword naming a project module
  (the registry's ``module="UNetSegmentationLib.networks.unet"``) count too;
- imports under ``if TYPE_CHECKING:`` never run, so they are listed but are not edges.

The folder graph maps each file to its concept folder (``UNetSegmentationLib/backends``; a file at
a package's root is a node of its own, e.g. ``UNetSegmentationLib/errors.py``).

Prints the cycles of both graphs, engine imports of ``slicer``/``qt``/``vtk``/``ctk``, engine files
over ``--max-file-lines``, the Slicer module file ``UNetSegmentation.py`` when it is over
``--max-module-lines`` (it stays the Slicer wiring; what is not wiring belongs in
``UNetSegmentationSlicer`` or the engine's ``panel``), and functions over ``--max-function-lines``
(physical lines, ``def`` to its end; printed only). Exits 1 when there is a cycle, the engine imports
Slicer, a file does not parse, an engine file is over its limit or the module file is over its
limit, else 0. ``--json`` prints the whole report as JSON instead (what
``Testing/test_import_graph.py`` reads).

Usage: ``python bench/import_graph.py [--json] [--max-file-lines 450] [--max-module-lines 550] [--max-function-lines 80]``
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "UNetSegmentation"
ENGINE = "UNetSegmentationLib"
PACKAGES = (ENGINE, "UNetSegmentationSlicer")
MODULE_FILES = ("UNetSegmentation.py",)
#: top-level names the engine must never import: Slicer, its Qt/VTK/CTK bindings, the Slicer side
SLICER_ONLY = {"slicer", "qt", "vtk", "ctk", "vtkmodules", "PythonQt", "UNetSegmentationSlicer", "UNetSegmentation", "sitkUtils"}


@dataclass(frozen=True)
class Import:
    """One import statement's target, as written and as resolved to a project module (None: third party)."""

    source: str  # importing module
    written: str  # the imported module path as written (relative ones made absolute)
    target: Optional[str]  # project module it resolves to
    line: int
    kind: str  # "top" (module level), "lazy" (inside a function or class), "dynamic", "type_checking"


@dataclass
class Report:
    modules: Dict[str, str] = field(default_factory=dict)  # module → path relative to SOURCE
    imports: List[Import] = field(default_factory=list)
    file_cycles: List[List[str]] = field(default_factory=list)
    folder_cycles: List[List[str]] = field(default_factory=list)
    slicer_imports: List[str] = field(default_factory=list)
    long_files: Dict[str, int] = field(default_factory=dict)  # engine file → lines
    long_module_files: Dict[str, int] = field(default_factory=dict)  # Slicer module file (UNetSegmentation.py) → lines
    long_functions: Dict[str, int] = field(default_factory=dict)  # "path:line qualified.name" → lines
    unparsable: List[str] = field(default_factory=list)  # "path:line: message"

    @property
    def failed(self) -> bool:
        return bool(self.file_cycles or self.folder_cycles or self.slicer_imports or self.unparsable or self.long_files or self.long_module_files)


# --- modules and their imports ----------------------------------------------------------------------


def discover(source: Path = SOURCE) -> Dict[str, Path]:
    """Dotted module name → file, for the project's packages and module files."""
    modules: Dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((source / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(source).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    for name in MODULE_FILES:
        if (source / name).is_file():
            modules[Path(name).stem] = source / name
    return modules


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The project module ``name`` is, or the closest enclosing one (``a.b.c`` → ``a.b``); None outside the project."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, nested: bool = False, type_only: bool = False) -> Iterator[Tuple[ast.AST, str]]:
    """Every node under ``node`` with how its imports would run: top, lazy or type_checking."""
    for child in ast.iter_child_nodes(node):
        kind = "type_checking" if type_only else ("lazy" if nested else "top")
        yield child, kind
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for branch in child.body:
                yield branch, "type_checking"
                yield from _walk(branch, nested, True)
            for branch in child.orelse:
                yield branch, kind
                yield from _walk(branch, nested, type_only)
            continue
        inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))  # a class body runs at import
        yield from _walk(child, inner, type_only)


def _dynamic_targets(node: ast.AST, modules: Dict[str, Path]) -> List[str]:
    """Project modules named by string literals that are imported at run time: the argument of
    ``import_module("…")`` and the value of a ``module="…"`` keyword (the registry's lazy classes)."""
    if not isinstance(node, ast.Call):
        return []
    function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    values = list(node.args[:1]) if function == "import_module" else []
    values += [keyword.value for keyword in node.keywords if keyword.arg == "module"]
    return [v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value in modules]


def imports_of(module: str, path: Path, tree: ast.Module, modules: Dict[str, Path]) -> List[Import]:
    """The imports of one parsed file, each resolved to a project module where it is one."""
    package = _package_of(module, path)
    found: List[Import] = []
    for node, kind in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, alias.name, _resolve(alias.name, modules), node.lineno, kind))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                target = candidate if candidate in modules else _resolve(base, modules)
                found.append(Import(module, candidate if candidate in modules else base, target, node.lineno, kind))
        else:
            for target in _dynamic_targets(node, modules):
                found.append(Import(module, target, target, node.lineno, "type_checking" if kind == "type_checking" else "dynamic"))
    return found


# --- cycles -----------------------------------------------------------------------------------------


def strongly_connected(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Tarjan's strongly connected components with more than one node (or a node importing itself)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def visit(start: str) -> None:  # iterative: no recursion limit on long chains
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph.get(successor, ())))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.get(node, ()):
                        components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def example_cycle(graph: Dict[str, Set[str]], component: Sequence[str]) -> List[str]:
    """One concrete cycle through the component's first node (breadth-first: a shortest one)."""
    members, start = set(component), component[0]
    previous: Dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph.get(node, ())):
                if successor == start:
                    chain = [node]
                    while chain[-1] != start:
                        chain.append(previous[chain[-1]])
                    return list(reversed(chain)) + [start]
                if successor in members and successor not in previous:
                    previous[successor] = node
                    following.append(successor)
        frontier = following
    return list(component)


def folder_of(relative: Path) -> str:
    """``UNetSegmentationLib/backends/plan.py`` → ``UNetSegmentationLib/backends``; a file at a package's
    root (``UNetSegmentationLib/errors.py``) or beside the packages is a node of its own."""
    return "/".join(relative.parts if len(relative.parts) <= 2 else relative.parts[:2])


# --- sizes ------------------------------------------------------------------------------------------


def long_functions(where: str, tree: ast.Module, limit: int) -> Dict[str, int]:
    """Functions (methods included) longer than ``limit`` physical lines, keyed ``where:line name``."""
    found: Dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if length > limit:
                        found[f"{where}:{child.lineno} {name}"] = length
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


# --- the report -------------------------------------------------------------------------------------


def build_report(max_file_lines: int = 450, max_function_lines: int = 80, source: Path = SOURCE, max_module_lines: int = 550) -> Report:
    modules = discover(source)
    report = Report(modules={m: p.relative_to(source).as_posix() for m, p in modules.items()})
    files: Dict[str, Set[str]] = {m: set() for m in modules}
    folders: Dict[str, Set[str]] = {}
    for module, path in modules.items():
        text = path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(text, filename=str(path))
        except SyntaxError as error:
            report.unparsable.append(f"{report.modules[module]}:{error.lineno}: {error.msg}")
            continue
        for item in imports_of(module, path, tree, modules):
            report.imports.append(item)
            is_engine = module == ENGINE or module.startswith(ENGINE + ".")
            if is_engine and item.written.split(".")[0] in SLICER_ONLY:
                report.slicer_imports.append(f"{report.modules[module]}:{item.line} imports {item.written}")
            if item.target is None or item.target == module or item.kind == "type_checking":
                continue
            files[module].add(item.target)
            source_folder, target_folder = folder_of(Path(report.modules[module])), folder_of(Path(report.modules[item.target]))
            folders.setdefault(source_folder, set())
            if source_folder != target_folder:
                folders[source_folder].add(target_folder)
        if module == ENGINE or module.startswith(ENGINE + "."):
            lines = len(text.splitlines())
            if lines > max_file_lines:
                report.long_files[report.modules[module]] = lines
        elif report.modules[module] in MODULE_FILES and len(text.splitlines()) > max_module_lines:
            report.long_module_files[report.modules[module]] = len(text.splitlines())
        report.long_functions.update(long_functions(report.modules[module], tree, max_function_lines))
    report.file_cycles = [example_cycle(files, c) for c in strongly_connected(files)]
    report.folder_cycles = [example_cycle(folders, c) for c in strongly_connected(folders)]
    return report


def edge_lines(report: Report, cycle: Sequence[str], by_folder: bool = False) -> Iterable[str]:
    """Where each step of a cycle is written: ``a.py:12 (lazy) → b`` (every such import for a folder step)."""

    def node(module: str) -> str:
        return folder_of(Path(report.modules[module])) if by_folder else module

    for step_source, step_target in zip(cycle, cycle[1:]):
        written = set()
        for item in report.imports:
            if item.target and item.kind != "type_checking" and node(item.source) == step_source and node(item.target) == step_target:
                line = f"    {report.modules[item.source]}:{item.line} ({item.kind}) → {item.target}"
                if line not in written:
                    written.add(line)
                    yield line
                if not by_folder:
                    break


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--max-file-lines", type=int, default=450)
    parser.add_argument("--max-module-lines", type=int, default=550, help="the Slicer module file UNetSegmentation.py (default: %(default)s)")
    parser.add_argument("--max-function-lines", type=int, default=80)
    parser.add_argument("--source", type=Path, default=SOURCE, help="the folder holding the packages (default: %(default)s)")
    args = parser.parse_args(argv)
    report = build_report(args.max_file_lines, args.max_function_lines, args.source, args.max_module_lines)
    if args.json:
        data = asdict(report)
        data["failed"] = report.failed
        print(json.dumps(data, indent=1))
        return 1 if report.failed else 0
    edges = sum(1 for i in report.imports if i.target and i.kind != "type_checking")
    print(f"{len(report.modules)} modules, {edges} project imports")
    for line in report.unparsable:
        print(f"cannot parse {line}")
    for title, cycles in (("file", report.file_cycles), ("folder", report.folder_cycles)):
        print(f"{title} cycles: {len(cycles) or 'none'}")
        for cycle in cycles:
            print("  " + " → ".join(cycle))
            print("\n".join(edge_lines(report, cycle, by_folder=title == "folder")))
    print(f"engine imports of slicer/qt/vtk: {len(report.slicer_imports) or 'none'}")
    for line in report.slicer_imports:
        print("  " + line)
    print(f"engine files over {args.max_file_lines} lines: {len(report.long_files) or 'none'}")
    for path, lines in sorted(report.long_files.items(), key=lambda kv: -kv[1]):
        print(f"  {lines:5d}  {path}")
    print(f"module file over {args.max_module_lines} lines: {len(report.long_module_files) or 'none'}")
    for path, lines in report.long_module_files.items():
        print(f"  {lines:5d}  {path}")
    print(f"functions over {args.max_function_lines} lines: {len(report.long_functions) or 'none'}")
    for where, lines in sorted(report.long_functions.items(), key=lambda kv: -kv[1]):
        print(f"  {lines:5d}  {where}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
