"""Every ``unetseg`` command works on exactly what the README installs (issue 13, class 12).

A fresh virtual environment (no system site-packages: only what the README's commands bring), the
README's set-up line run as it is written (with the venv's ``python3`` first on ``PATH``) in a copy of
this checkout, then every command once: ``archs``, ``create``, ``info``, ``predict``, ``train`` (tiny),
``evaluate`` (which needs scipy, a core dependency since issue 13), ``export`` and ``demo`` (the
README line itself runs it). Slow (about 1 minute to install where the torch wheel is local, 1-2 more
for the commands) and needs the package index: marked ``slow``, so the whole suite (the README's test
command, CI) runs it and the quick loop ``python3 -m pytest -m "not slow"`` leaves it out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def readme_setup_line() -> str:
    """The first command of the README's set-up section (the one that installs and runs the demo)."""
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set-up on a fresh machine", 1)[1]
    block = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1)
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert "pip install" in lines[0] and "unetseg demo" in lines[0], lines[0]
    return lines[0]


def checkout_copy(target: Path) -> Path:
    """The files of this checkout as a user would have them (tracked and new, not ignored ones)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPOSITORY, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPOSITORY / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def fresh_environment(root: Path) -> dict:
    """A new venv without system site-packages, first on ``PATH``; the machine's pip settings stay
    (they are where ``torch==2.13.0`` comes from here), nothing else of this interpreter leaks in."""
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(root)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "UNETSEG_"))}
    environment.update(PATH=f"{root / 'bin'}{os.pathsep}{environment.get('PATH', '')}", VIRTUAL_ENV=str(root), UNETSEG_CACHE_DIR=str(root / "cache"))
    return environment


def run(command, cwd: Path, environment: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    finished = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout, shell=isinstance(command, str))
    shown = command if isinstance(command, str) else " ".join(map(str, command))
    assert finished.returncode == 0, f"{shown} exited {finished.returncode}\n{finished.stderr[-3000:]}"
    assert "Traceback" not in finished.stderr, finished.stderr[-3000:]
    return finished


@pytest.mark.child_process
def test_the_readme_install_runs_every_command(tmp_path):
    repository = checkout_copy(tmp_path / "UNetSegmentation")
    environment = fresh_environment(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python3"
    assert subprocess.run([python, "-c", "import torch"], env=environment, capture_output=True).returncode != 0  # truly fresh

    started = time.perf_counter()
    run(["bash", "-c", readme_setup_line()], repository, environment)  # installs, then runs `unetseg demo`
    setup_s = time.perf_counter() - started
    assert (repository / "unetseg-demo" / "CTChest4.seg.nrrd").is_file() and (repository / "unetseg-demo" / "CTChest4-overlay.png").is_file()

    probe = "import slicerio; print(slicerio.get_testdata_file('CTChest4.nrrd')); print(slicerio.get_testdata_file('Segmentation.seg.nrrd'))"
    ct, segmentation = run([python, "-c", probe], repository, environment).stdout.split()
    work = tmp_path / "work"
    work.mkdir()
    unetseg = str(tmp_path / "venv" / "bin" / "unetseg")
    timings = {"setup (README line: install + demo)": setup_s}
    commands = {
        "archs": [unetseg, "archs"],
        "create": [unetseg, "create", "--arch", "unetplusplus", "--classes", "右肺,left lung", "--features", "4,8,16,32", "created.safetensors"],
        "info": [unetseg, "info", "created.safetensors"],
        "predict": [unetseg, "predict", "--checkpoint", "created.safetensors", "--progress", "none", ct, "created.seg.nrrd"],
        "train": [unetseg, "train", "--image", ct, "--label", segmentation, "--val-slices", "0.2", "--features", "4,8,16,32", "--epochs", "1",
                  "--steps-per-epoch", "2", "--batch-size", "2", "--crop", "64", "--progress", "none", "trained.safetensors"],
        "evaluate": [unetseg, "evaluate", "--checkpoint", "trained.safetensors", "--image", ct, "--label", segmentation, "--slices", "checkpoint",
                     "--output-dir", "evaluation", "--progress", "none"],
        "export": [unetseg, "export", "--depth", "2", "trained.safetensors", "trained-L2.safetensors"],
        "demo": [unetseg, "demo", "--output-dir", "demo", "--progress", "none"],
    }
    for name, command in commands.items():
        started = time.perf_counter()
        run(command, work, environment)
        timings[name] = time.perf_counter() - started
    for produced in ("created.seg.nrrd", "trained.safetensors", "evaluation/evaluation.csv", "trained-L2.safetensors", "demo/CTChest4.seg.nrrd"):
        assert (work / produced).is_file(), produced
    print("\n".join(f"{name}: {seconds:.1f} s" for name, seconds in timings.items()), file=sys.stderr)
