"""The README's set-up works on a new user's machine, and every ``unetseg`` command works on exactly what
it installs (issue 13, class 12; issue 22, defect 8).

- The set-up is two commands: a ``git clone`` and ``Resources/Tools/setup.sh``, which makes a virtual
  environment (Debian 12 and Ubuntu 24.04 refuse ``pip install`` outside one) and installs torch first,
  the CPU build from PyTorch's CPU wheel index where that index can be reached, pip's configured index
  otherwise (with a note), or the CUDA build with ``--cuda``; an installed torch 2.13.0 is kept. These
  decisions are checked quickly with a stand-in interpreter that records what it is asked to run.
- ``.ci/run`` runs exactly the README's test command.
- The README's set-up line, run as it is written in a copy of this checkout, with nothing of this
  interpreter's packages (the script's own venv), then every command once: ``archs``, ``create``,
  ``info``, ``predict``, ``train`` (tiny), ``evaluate``, ``export`` and ``demo`` (the README line itself
  runs it). Slow (about 1 minute to install where the torch wheel is local, 1-2 more for the commands)
  and needs the package index: marked ``slow``, so the whole suite (the README's test command, CI) runs
  it and the quick loop ``python3 -m pytest -m "not slow"`` leaves it out.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = REPOSITORY / "Resources" / "Tools" / "setup.sh"
TORCH = "torch==2.13.0"


def readme_code_blocks() -> List[List[str]]:
    """The ``bash`` blocks of the README's set-up section, as their command lines."""
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [[line for line in block.splitlines() if line.strip() and not line.startswith("#")]
            for block in re.findall(r"```bash\n(.*?)\n```", section, re.S)]


def readme_setup_line() -> str:
    """The README's first two commands are the clone and the set-up line (which installs and runs the demo)."""
    clone, setup = readme_code_blocks()[0][:2]
    assert clone.startswith("git clone ") and "&& cd " in clone, clone
    assert setup.startswith("Resources/Tools/setup.sh ") and "unetseg demo" in setup, setup
    return setup


def readme_test_command() -> str:
    """The README's test command: the block that runs pytest."""
    commands = [line for block in readme_code_blocks() for line in block if "pytest" in line and "setup.sh" in line]
    assert len(commands) == 1, commands
    return commands[0]


# --- the README's commands and .ci/run -------------------------------------------------------------------


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPOSITORY / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line for line in ci.splitlines() if line.strip() and not line.startswith(("#", "set ", "cd ", "export "))]
    assert commands == [readme_test_command()]
    assert "UNETSEG_REQUIRE_MRML=1" in ci  # a skipped real-MRML test is a failure in CI


def test_the_readme_sets_up_in_a_venv_with_the_cpu_build_of_torch():
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    assert readme_setup_line().startswith("Resources/Tools/setup.sh")
    assert "--index-url https://download.pytorch.org/whl/cpu" in section  # the CPU build by hand, too
    assert "https://download.pytorch.org/whl/cpu" in SETUP_SCRIPT.read_text(encoding="utf-8")  # the script's default index is the same
    assert "python3 -m venv" in section and "--cuda" in section
    assert os.access(SETUP_SCRIPT, os.X_OK)


# --- what the set-up script decides, with a stand-in interpreter ---------------------------------------


def stand_in_venv(tmp_path: Path, torch_version: str = "") -> dict:
    """A venv whose ``python`` records each call and runs ``-c`` code with the real interpreter without
    site-packages (``-S``: no torch unless ``torch_version`` puts a record of one on the path); ``-m pip``
    only records. Returns the environment for the script."""
    venv, log, packages = tmp_path / "venv", tmp_path / "calls.log", tmp_path / "packages"
    (venv / "bin").mkdir(parents=True)
    packages.mkdir()
    if torch_version:
        record = packages / f"torch-{torch_version}.dist-info"
        record.mkdir()
        (record / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {torch_version}\n")
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/bash\necho "$*" >> "{log}"\n[ "$1" = "-m" ] && exit 0\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return {**os.environ, "UNETSEG_VENV": str(venv), "PYTHONPATH": str(packages), "UNETSEG_CALLS": str(log)}


def run_setup(environment: dict, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP_SCRIPT), *arguments], env=environment, capture_output=True, text=True, timeout=120)


def pip_calls(environment: dict) -> List[str]:
    return [line for line in Path(environment["UNETSEG_CALLS"]).read_text().splitlines() if line.startswith("-m pip")]


@pytest.fixture
def cpu_index(tmp_path) -> Iterator[str]:
    """A reachable stand-in for PyTorch's CPU wheel index (an HTTP server with a ``torch/`` page)."""
    root = tmp_path / "index"
    (root / "torch").mkdir(parents=True)
    (root / "torch" / "index.html").write_text("<a>torch-2.13.0+cpu</a>")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_setup_installs_the_cpu_build_of_torch_first_then_the_engine(tmp_path, cpu_index):
    environment = {**stand_in_venv(tmp_path), "UNETSEG_TORCH_CPU_INDEX": cpu_index}
    result = run_setup(environment, "test")
    assert result.returncode == 0, result.stderr
    assert pip_calls(environment) == [f"-m pip install -q --index-url {cpu_index} {TORCH}", f"-m pip install -q -e {REPOSITORY}[test]"]


def test_an_unreachable_cpu_index_falls_back_to_pips_configured_index_and_says_so(tmp_path):
    environment = {**stand_in_venv(tmp_path), "UNETSEG_TORCH_CPU_INDEX": "http://127.0.0.1:9/whl/cpu"}  # port 9: nothing listens
    result = run_setup(environment, "plots,onnx")
    assert result.returncode == 0, result.stderr
    assert pip_calls(environment) == [f"-m pip install -q {TORCH}", f"-m pip install -q -e {REPOSITORY}[plots,onnx]"]
    assert "cannot be reached" in result.stderr and "CUDA build" in result.stderr


def test_cuda_takes_torch_from_pips_configured_index(tmp_path, cpu_index):
    environment = {**stand_in_venv(tmp_path), "UNETSEG_TORCH_CPU_INDEX": cpu_index}
    assert run_setup(environment, "--cuda", "onnx").returncode == 0
    assert pip_calls(environment) == [f"-m pip install -q {TORCH}", f"-m pip install -q -e {REPOSITORY}[onnx]"]


def test_an_installed_torch_2_13_is_kept_and_no_extras_install_the_core(tmp_path, cpu_index):
    environment = {**stand_in_venv(tmp_path, torch_version="2.13.0+cpu"), "UNETSEG_TORCH_CPU_INDEX": cpu_index}
    result = run_setup(environment)
    assert result.returncode == 0, result.stderr
    assert pip_calls(environment) == [f"-m pip install -q -e {REPOSITORY}"]
    assert "torch 2.13.0+cpu is already installed" in result.stderr


def test_a_python_without_venv_support_is_told_what_to_install(tmp_path):
    python = tmp_path / "python3"  # Debian's python3 without python3-venv: `-m venv` fails
    python.write_text(f'#!/bin/bash\n[ "$1" = "-m" ] && {{ echo "ensurepip is not available" >&2; exit 1; }}\nexec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    result = run_setup({**os.environ, "PYTHON": str(python), "UNETSEG_VENV": str(tmp_path / "venv")}, "onnx")
    assert result.returncode == 1 and "sudo apt install python3-venv" in result.stderr


def test_an_unknown_option_is_refused(tmp_path):
    result = run_setup({**os.environ, "UNETSEG_VENV": str(tmp_path / "venv")}, "--gpu")
    assert result.returncode == 2 and "unknown option --gpu" in result.stderr and not (tmp_path / "venv").exists()


# --- the README's set-up, run as written -------------------------------------------------------------------


def checkout_copy(target: Path) -> Path:
    """The files of this checkout as a user would have them (tracked and new, not ignored ones)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPOSITORY, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPOSITORY / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def user_environment(cache: Path) -> dict:
    """A new user's shell: no venv active, nothing of this interpreter's settings; the machine's pip
    settings stay (they are where ``torch==2.13.0`` comes from here)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "UNETSEG_"))}
    environment["UNETSEG_CACHE_DIR"] = str(cache)
    return environment


def run(command, cwd: Path, environment: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    finished = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout, shell=isinstance(command, str))
    shown = command if isinstance(command, str) else " ".join(map(str, command))
    assert finished.returncode == 0, f"{shown} exited {finished.returncode}\n{finished.stderr[-3000:]}"
    assert "Traceback" not in finished.stderr, finished.stderr[-3000:]
    return finished


@pytest.mark.slow
@pytest.mark.child_process
def test_the_readme_install_runs_every_command(tmp_path):
    repository = checkout_copy(tmp_path / "UNetSegmentation")
    environment = user_environment(tmp_path / "cache")
    assert not (repository / ".venv").exists()  # truly fresh: the script makes it

    started = time.perf_counter()
    run(["bash", "-c", readme_setup_line()], repository, environment)  # makes .venv, installs, then runs `unetseg demo`
    setup_s = time.perf_counter() - started
    python = repository / ".venv" / "bin" / "python"
    assert "include-system-site-packages = false" in (repository / ".venv" / "pyvenv.cfg").read_text()
    assert (repository / "unetseg-demo" / "CTChest4.seg.nrrd").is_file() and (repository / "unetseg-demo" / "CTChest4-overlay.png").is_file()

    probe = "import slicerio; print(slicerio.get_testdata_file('CTChest4.nrrd')); print(slicerio.get_testdata_file('Segmentation.seg.nrrd'))"
    ct, segmentation = run([python, "-c", probe], repository, environment).stdout.split()
    work = tmp_path / "work"
    work.mkdir()
    unetseg = str(repository / ".venv" / "bin" / "unetseg")
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
