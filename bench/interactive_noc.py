"""Clicks to Dice 0.85 / 0.90 (NoC@85, NoC@90) and time per interaction (issue 26): the interactive
network through the engine's own :class:`~UNetSegmentationLib.interactive.session.RefineSession`
against Slicer's "Grow from seeds" (``bench/grow_from_seeds.py``) fed the same clicks as seeds.

**Protocol** (``bench/noc_protocol.py``): simulated clicks, each at the centre of the largest error region
of the slice with the most wrong voxels (the first, from nothing, at the centre of the object's largest
region on the slice where it is largest); NoC@t = clicks until the 3D Dice first reaches t, cap 20 (a
run that does not reach it counts 20 and is marked). Every structure is run from nothing and from the
automatic result (the automatic model's prediction of that class), with both methods.

**One interaction** of the interactive network is what the Segment Editor effect does on a click: the
click on its slice (``RefineSession.add``), then propagation to the neighbours (``RefineSession.propagate``);
the mask after both is scored. Its time is the two together; the click alone (the preview on the
visible slice) and the propagation are also reported. One interaction of Grow from seeds: its seed
disk painted and the filter updated (incrementally, as the effect does; reset where a seed is relabelled).

**Held out** (leave one patient out): a CT of the training data's datalist fold K is refined with the
interactive model trained without fold K (``--interactive-dir``/fold{K}.safetensors) and its automatic
result is the prediction of the automatic model trained without fold K (``--lopo-dir``/fold{K}.safetensors;
where there is none, the bundled model, which was trained on fold 0's patient only, for folds 1 and 2,
and only for the classes it has). The MR (TotalSegmentator's ``example_mr_sm`` with its ``total_mr``
labels) was never trained on: it is refined with the shipped interactive model (``--shipped-model``), from
nothing only (no automatic model reads MR).

**Latency on a 512×512 input** (the issue's per-click and ±30-slice targets, in-process and through the
warm engine) is ``bench/refine_latency.py``'s; the times here are those of the runs above, on the
training data's own (smaller) volumes.

Run from the repository root, niced, one torch thread (the machine has 2 cores and is shared):
``nice -n 10 python bench/interactive_noc.py [--threads 1] [--quick | --structures A,B] [--write] [--json FILE]``
(``--quick``: liver and aorta only; ``--write``: the tables into BENCHMARKS.md's "Interactive refinement").
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "UNetSegmentation"))
sys.path.insert(0, str(REPO / "bench"))

from grow_from_seeds import GrowFromSeeds  # noqa: E402
from marked_section import write_marked_section  # noqa: E402
from noc_protocol import CAP, TARGETS, Trace, VoxelClick, simulate  # noqa: E402

#: the structures of the issue, by the training data's class names (vertebrae: two column regions)
CT_STRUCTURES = ("liver", "spleen", "right kidney", "left kidney", "right lung", "left lung",
                 "thoracic vertebral column", "lumbar vertebral column", "aorta")
#: our name -> TotalSegmentator's total_mr name
MR_STRUCTURES = {"liver": "liver", "spleen": "spleen", "right kidney": "kidney_right", "left kidney": "kidney_left",
                 "vertebrae": "vertebrae", "aorta": "aorta"}
#: a structure with fewer voxels on a volume is not measured there
MIN_VOXELS = 200
BUNDLED = REPO / "Testing" / "Data" / "chest-ct-unetplusplus.safetensors"  # the chest model of rounds 1-2
SHIPPED_INTERACTIVE = REPO / "UNetSegmentation" / "Resources" / "Models" / "interactive-ct-unetplusplus.safetensors"
TS_REFERENCE = Path("/tmp/ts/totalsegmentator-2.18.0")
START, END = "<!-- interactive-noc:start -->", "<!-- interactive-noc:end -->"


@dataclass
class Case:
    """One structure on one held-out volume, with the models that may refine and predict it."""

    volume: str
    structure: str
    image: Path
    label: Path
    value: int
    held_out: str  # e.g. "fold 1 (ts-abdomen)" or "never trained on"
    interactive_model: Path
    automatic_model: Optional[Path] = None


@dataclass
class Run:
    """One protocol run: method and start, its trace and the interactive network's click/propagation split."""

    volume: str
    structure: str
    method: str
    start: str
    voxels: int
    trace: Trace
    click_ms: List[float] = field(default_factory=list)
    propagate_ms: List[float] = field(default_factory=list)


# -- the cases -------------------------------------------------------------------------------------------


def automatic_model_for(fold: int, lopo_dir: Path) -> Optional[Path]:
    """The automatic model that never saw fold ``fold``: the leave-one-out fold model, else the bundled
    model (trained on fold 0's patient only) for the other folds."""
    candidate = lopo_dir / f"fold{fold}.safetensors"
    if candidate.is_file():
        return candidate
    return BUNDLED if fold != 0 else None


def ct_cases(data: Path, interactive_dir: Path, lopo_dir: Path, structures: Sequence[str]) -> List[Case]:
    """Every structure of ``structures`` on every datalist volume that labels it (at least MIN_VOXELS)."""
    datalist = json.loads((data / "datalist.json").read_text())
    values = {name: int(value) for value, name in datalist["labels"].items()}
    cases = []
    for entry in datalist["training"]:
        fold = int(entry["fold"])
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(data / entry["label"])))
        for structure in structures:
            if structure in entry["labelled_classes"] and np.count_nonzero(label == values[structure]) >= MIN_VOXELS:
                cases.append(Case(entry["name"], structure, data / entry["image"], data / entry["label"], values[structure],
                                  f"fold {fold} ({entry['patient']})", interactive_dir / f"fold{fold}.safetensors",
                                  automatic_model_for(fold, lopo_dir)))
    return cases


def total_mr_classes(sdist: Path) -> Dict[str, int]:
    """TotalSegmentator's ``class_map["total_mr"]`` (name -> value), read from its map_to_binary.py."""
    tree = ast.parse((sdist / "totalsegmentator" / "map_to_binary.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            class_map = ast.literal_eval(node.value)
            return {name: int(value) for value, name in class_map["total_mr"].items()}
    raise SystemExit(f"{sdist}: no class_map in totalsegmentator/map_to_binary.py")


def mr_cases(sdist: Path, model: Path, structures: Sequence[str]) -> List[Case]:
    """The structures of MR_STRUCTURES on TotalSegmentator's reference MR (never trained on)."""
    reference = sdist / "tests" / "reference_files"
    image, label = reference / "example_mr_sm.nii.gz", reference / "example_seg_mr.nii.gz"
    if not image.is_file():
        return []
    classes = total_mr_classes(sdist)
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    return [Case("example_mr_sm (MR)", ours, image, label, classes[theirs], "never trained on", model)
            for ours, theirs in MR_STRUCTURES.items()
            if (ours in structures or (ours == "vertebrae" and any("vertebral" in name for name in structures)))
            and np.count_nonzero(array == classes[theirs]) >= MIN_VOXELS]


# -- the methods -----------------------------------------------------------------------------------------


class SessionRefinement:
    """The interactive network as the Segment Editor effect drives it: a click, then propagation."""

    def __init__(self, image: sitk.Image, model, initial: Optional[np.ndarray]) -> None:
        from UNetSegmentationLib.interactive.session import RefineSession

        self.session = RefineSession.open(image, model, initial)
        if self.session.grid.slice_axis_of_array() != 0:
            raise SystemExit("the benchmark's volumes are axial: the session's slice axis must be the array's first")
        self.click_ms: List[float] = []
        self.propagate_ms: List[float] = []

    def click(self, click: VoxelClick) -> np.ndarray:
        from UNetSegmentationLib.interactive.click_points import clicks_from_points

        index, row, column, positive = click
        started = time.perf_counter()
        self.session.add(clicks_from_points([(column, row, index)], positive))
        middle = time.perf_counter()
        self.session.propagate()
        self.click_ms.append((middle - started) * 1000.0)
        self.propagate_ms.append((time.perf_counter() - middle) * 1000.0)
        return self.session.mask


class Models:
    """Interactive models loaded once, automatic results predicted once per (model, volume)."""

    def __init__(self, work: Path, threads: int) -> None:
        self.work, self.threads = work, threads
        self._interactive: Dict[Path, object] = {}
        self._automatic: Dict[Tuple[Path, Path], np.ndarray] = {}

    def interactive(self, path: Path):
        from UNetSegmentationLib.interactive.predictor import InteractiveModel

        if path not in self._interactive:
            self._interactive[path] = InteractiveModel.load(path)
        return self._interactive[path]

    def automatic(self, case: Case) -> Optional[np.ndarray]:
        """The automatic model's mask of the case's structure (None: no model, or it lacks the class)."""
        from UNetSegmentationLib.cli.main import main
        from UNetSegmentationLib.model.header import read_metadata

        if case.automatic_model is None:
            return None
        value = {c.name: c.value for c in read_metadata(case.automatic_model).classes}.get(case.structure)
        if value is None:
            return None
        key = (case.automatic_model, case.image)
        if key not in self._automatic:
            digest = hashlib.sha256(case.automatic_model.read_bytes()).hexdigest()[:12]  # a retrained model is predicted again
            output = self.work / f"{case.automatic_model.stem}-{digest}-{case.volume}.nii.gz"
            code = 0 if output.is_file() else main(["predict", "--checkpoint", str(case.automatic_model), "--threads", str(self.threads),
                         "--progress", "none", "--overwrite", str(case.image), str(output)])
            if code != 0:
                raise SystemExit(f"unetseg predict failed on {case.image} ({code})")
            self._automatic[key] = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
        return self._automatic[key] == value


def run_case(case: Case, models: Models, cap: int) -> List[Run]:
    """The four runs of one case (two methods, two starts; the automatic start only where there is one)."""
    from UNetSegmentationLib.interactive.session import read_session_input

    image = read_session_input(case.image)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))) == case.value
    intensity = sitk.GetArrayFromImage(image)
    spacing = tuple(reversed(image.GetSpacing()))  # (slice, row, column) of the [k, j, i] array
    model = models.interactive(case.interactive_model)
    radius = model.spec.click_radius_mm
    starts: Dict[str, Optional[np.ndarray]] = {"nothing": None}
    automatic = models.automatic(case)
    if automatic is not None:
        starts["automatic"] = automatic
    runs = []
    for start, initial in starts.items():
        zero = np.zeros(truth.shape, dtype=bool) if initial is None else initial
        holder: Dict[str, SessionRefinement] = {}

        def open_session(initial=initial, zero=zero):
            holder["session"] = SessionRefinement(image, model, initial)
            return holder["session"], zero

        trace = simulate(open_session, truth, cap=cap)
        runs.append(Run(case.volume, case.structure, "interactive", start, int(truth.sum()), trace,
                        holder["session"].click_ms, holder["session"].propagate_ms))
        trace = simulate(lambda initial=initial, zero=zero: (GrowFromSeeds(intensity, spacing, radius, initial), zero), truth, cap=cap)
        runs.append(Run(case.volume, case.structure, "grow from seeds", start, int(truth.sum()), trace))
    return runs


# -- the tables ------------------------------------------------------------------------------------------


def _noc(trace: Trace, target: float, cap: int) -> str:
    count = trace.noc(target, cap)
    return f">{cap}" if count is None else str(count)


def _mean_noc(runs: Sequence[Run], target: float, cap: int) -> str:
    counts = [run.trace.noc(target, cap) for run in runs]
    failed = sum(c is None for c in counts)
    mean = statistics.mean(cap if c is None else c for c in counts) if counts else float("nan")
    return f"{mean:.1f}" + (f" ({failed} ✗)" if failed else "")


def _after(trace: Trace, clicks: int) -> str:
    """The Dice after ``clicks`` clicks (the last one where the run stopped earlier, having reached 0.90)."""
    return f"{trace.dice[min(clicks, len(trace.dice) - 1)]:.2f}"


def _mean_after(runs: Sequence[Run], clicks: int) -> str:
    return f"{statistics.mean(r.trace.dice[min(clicks, len(r.trace.dice) - 1)] for r in runs):.2f}"


def noc_table(runs: Sequence[Run], cases: Sequence[Case], start: str, cap: int) -> str:
    """One start's table: per case, NoC@85 / NoC@90 and the Dice at 0 and 5 clicks, both methods."""
    by_key = {(r.volume, r.structure, r.method, r.start): r for r in runs}
    rows = ["| structure | volume (held out) | voxels | Dice at 0 clicks | NoC@85 network | NoC@85 grow from seeds | "
            "NoC@90 network | NoC@90 grow from seeds | Dice after 5 clicks network / grow from seeds | after 20 clicks |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    measured: Dict[str, List[Run]] = {"interactive": [], "grow from seeds": []}
    for case in cases:
        net, grow = by_key.get((case.volume, case.structure, "interactive", start)), by_key.get((case.volume, case.structure, "grow from seeds", start))
        if net is None or grow is None:
            continue
        measured["interactive"].append(net)
        measured["grow from seeds"].append(grow)
        rows.append(f"| {case.structure} | {case.volume}: {case.held_out} | {net.voxels} | {net.trace.dice[0]:.2f} | "
                    f"{_noc(net.trace, TARGETS[0], cap)} | {_noc(grow.trace, TARGETS[0], cap)} | {_noc(net.trace, TARGETS[1], cap)} | "
                    f"{_noc(grow.trace, TARGETS[1], cap)} | {_after(net.trace, 5)} / {_after(grow.trace, 5)} | {_after(net.trace, 20)} / {_after(grow.trace, 20)} |")
    if not measured["interactive"]:
        return ""
    net, grow = measured["interactive"], measured["grow from seeds"]
    rows.append(f"| **mean** ({len(net)} run{'' if len(net) == 1 else 's'}; >{cap} counts {cap}) | | | | **{_mean_noc(net, TARGETS[0], cap)}** | "
                f"**{_mean_noc(grow, TARGETS[0], cap)}** | **{_mean_noc(net, TARGETS[1], cap)}** | **{_mean_noc(grow, TARGETS[1], cap)}** | "
                f"{_mean_after(net, 5)} / {_mean_after(grow, 5)} | {_mean_after(net, 20)} / {_mean_after(grow, 20)} |")
    return "\n".join(rows) + "\n"


def _percentiles(values: Sequence[float]) -> str:
    if not values:
        return "— | —"
    return f"{float(np.median(values)):.0f} | {float(np.percentile(values, 95)):.0f}"


def time_table(runs: Sequence[Run]) -> str:
    """Median and p95 ms per interaction, both methods (the network's split into click and propagation)."""
    net = [r for r in runs if r.method == "interactive"]
    grow = [r for r in runs if r.method == "grow from seeds"]
    first = [r.trace.latency_ms[0] for r in grow if r.trace.latency_ms]
    later = [ms for r in grow for ms in r.trace.latency_ms[1:]]
    rows = ["| method | part | interactions | median ms | p95 ms |", "|---|---|---:|---:|---:|",
            f"| interactive network | click + propagation (one interaction) | {sum(len(r.trace.latency_ms) for r in net)} | "
            f"{_percentiles([ms for r in net for ms in r.trace.latency_ms])} |",
            f"| interactive network | the click alone (visible slice) | {sum(len(r.click_ms) for r in net)} | {_percentiles([ms for r in net for ms in r.click_ms])} |",
            f"| interactive network | the propagation alone | {sum(len(r.propagate_ms) for r in net)} | {_percentiles([ms for r in net for ms in r.propagate_ms])} |",
            f"| grow from seeds | one interaction | {sum(len(r.trace.latency_ms) for r in grow)} | {_percentiles([ms for r in grow for ms in r.trace.latency_ms])} |",
            f"| grow from seeds | the first (full computation) | {len(first)} | {_percentiles(first)} |",
            f"| grow from seeds | the later ones (incremental) | {len(later)} | {_percentiles(later)} |"]
    return "\n".join(rows) + "\n"


# -- the run ---------------------------------------------------------------------------------------------


def machine_line(threads: int, load_before: Tuple[float, ...]) -> str:
    import torch

    load_after = os.getloadavg()
    return (f"{os.cpu_count()} logical CPUs, torch {torch.__version__} at {threads} thread(s) (`torch.set_num_threads`), niced; load "
            f"average (1 min) {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end (other jobs shared the machine)")


def report(runs: Sequence[Run], cases: Sequence[Case], headers: Sequence[str], cap: int) -> str:
    """The Markdown of the results: how they were made (``headers``), the models, the NoC and time tables."""
    models = sorted({f"{c.held_out}: interactive `{c.interactive_model}`, automatic `{c.automatic_model or '—'}`" for c in cases})
    parts = ["".join(f"- {line}\n" for line in headers),
             "Models (held out → used):\n\n" + "".join(f"- {line}\n" for line in models),
             "**From nothing** (an empty mask; the first click positive at the centre of the object's largest region on its largest slice):\n",
             noc_table(runs, cases, "nothing", cap)]
    automatic = noc_table(runs, cases, "automatic", cap)
    if automatic:
        parts += ["**From the automatic result** (the automatic model's mask of the class; cases without one are left out):\n", automatic]
    parts += ["**Time per interaction** (all runs above; the interactive network's interaction is the click and its propagation):\n", time_table(runs)]
    return "\n".join(parts)


def save(path: Path, runs: Sequence[Run], cases: Sequence[Case], header: str) -> None:
    """Every run so far (rewritten after each case, so a stopped run keeps what it measured)."""
    path.write_text(json.dumps({"header": header, "cases": [{k: str(v) if isinstance(v, Path) else v for k, v in asdict(c).items()} for c in cases],
                                "runs": [asdict(r) for r in runs]}, indent=1))


_PATHS = ("image", "label", "interactive_model", "automatic_model")


def load(paths: Sequence[Path]) -> Tuple[List[Run], List[Case], List[str]]:
    """The runs, cases and headers of earlier ``--json`` files (the tables of several partial runs)."""
    runs, cases, headers = [], [], []
    for path in paths:
        saved = json.loads(path.read_text())
        headers.append(saved["header"])
        done = {(r["volume"], r["structure"]) for r in saved["runs"]}
        for case in saved["cases"]:
            if (case["volume"], case["structure"]) in done:
                cases.append(Case(**{k: Path(v) if k in _PATHS and v is not None else v for k, v in case.items()}))
        runs += [Run(**{**r, "trace": Trace(**r["trace"])}) for r in saved["runs"]]
    return runs, cases, headers


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "training-data", help="the training data (datalist.json, images/, labels/)")
    parser.add_argument("--interactive-dir", type=Path, default=Path("/tmp/interactive"), help="fold{K}.safetensors: interactive models without fold K")
    parser.add_argument("--lopo-dir", type=Path, default=Path("/tmp/lopo"), help="fold{K}.safetensors: automatic models without fold K")
    parser.add_argument("--shipped-model", type=Path, default=SHIPPED_INTERACTIVE, help="the interactive model trained on every CT: the MR's")
    parser.add_argument("--totalsegmentator", type=Path, default=TS_REFERENCE, help="the unpacked TotalSegmentator sdist (its MR)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cap", type=int, default=CAP)
    parser.add_argument("--quick", action="store_true", help="liver and aorta only")
    parser.add_argument("--structures", help="comma-separated class names instead (e.g. 'thoracic vertebral column')")
    parser.add_argument("--volumes", help="comma-separated volume names only (datalist names; example_mr_sm for the MR)")
    parser.add_argument("--write", action="store_true", help="write the tables into BENCHMARKS.md")
    parser.add_argument("--json", type=Path, help="save every run's Dice and times here (after each case)")
    parser.add_argument("--work", type=Path, help="keep the automatic results here for the next run (default: a temporary folder)")
    parser.add_argument("--tables-from", type=Path, nargs="+", metavar="JSON", help="no run: the tables of earlier --json files")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, command: str) -> Tuple[List[Run], List[Case], str]:
    import torch

    torch.set_num_threads(args.threads)
    load_before, started = os.getloadavg(), time.perf_counter()
    structures = tuple(args.structures.split(",")) if args.structures else ("liver", "aorta") if args.quick else CT_STRUCTURES
    cases = ct_cases(args.data, args.interactive_dir, args.lopo_dir, structures) + mr_cases(args.totalsegmentator, args.shipped_model, structures)
    if args.volumes:
        cases = [c for c in cases if c.volume.split(" ")[0] in args.volumes.split(",")]
    missing = sorted({str(c.interactive_model) for c in cases if not c.interactive_model.is_file()})
    if missing:
        raise SystemExit("interactive models missing: " + ", ".join(missing))
    used = sorted({c.interactive_model for c in cases} | {c.automatic_model for c in cases if c.automatic_model is not None})
    digests = ", ".join(f"`{p}` {hashlib.sha256(p.read_bytes()).hexdigest()[:12]}" for p in used)
    runs: List[Run] = []
    done_cases: List[Case] = []
    with tempfile.TemporaryDirectory(prefix="interactive-noc-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        models = Models(work, args.threads)
        for case in cases:
            done = run_case(case, models, args.cap)
            runs += done
            done_cases.append(case)
            print(f"{case.structure} on {case.volume}: " + "; ".join(
                f"{r.method} from {r.start}: NoC@85 {_noc(r.trace, TARGETS[0], args.cap)}, NoC@90 {_noc(r.trace, TARGETS[1], args.cap)}" for r in done), flush=True)
            header = (f"`{command}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {(time.perf_counter() - started) / 60.0:.1f} min; "
                      f"{machine_line(args.threads, load_before)}; models' sha256: {digests}")
            if args.json:
                save(args.json, runs, done_cases, header)
    return runs, done_cases, header


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    command = ("nice -n 10 python bench/interactive_noc.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    if args.tables_from:
        runs, cases, headers = load(args.tables_from)
    else:
        runs, cases, header = measure(args, command)
        headers = [header]
    text = report(runs, cases, headers, args.cap)
    print(text)
    if args.write:
        write_marked_section(REPO / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
