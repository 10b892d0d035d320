"""The wheel as a new user gets it: built with `pip wheel --no-deps` from a copy of the sources,
installed with `pip install --no-deps --target SITE`, and run from an unrelated folder with SITE first
on the path (its dependencies come from this environment, the checkout's own p2o is shadowed: every
run checks that `p2o.__file__` lies in SITE). Nothing is downloaded: the build uses this
environment's setuptools (`--no-build-isolation`, `--no-index`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "src", "programs", "evals", "configs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", minversion="69", reason="the wheel is built with this setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    # A copy, so that the build's build/ and *.egg-info never touch the working tree.
    src = tmp / "p2o-src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src)],
        check=True,
        cwd=tmp,
    )
    (built,) = (tmp / "dist").glob("p2o-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "-q",
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    return target


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    cwd = tmp_path / "unrelated"
    cwd.mkdir()
    return cwd


def run_installed(
    site: Path, cwd: Path, args: list[str], timeout: float = 120
) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("P2O_PROGRAMS_DIR", "P2O_EVALS_DIR", "P2O_CONFIGS_DIR")
    }
    env["PYTHONPATH"] = str(site)
    env["PYTHONNOUSERSITE"] = "1"
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_p2o(site: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The wheel's own `p2o` console script, run with this environment's interpreter."""
    return run_installed(site, cwd, [str(site / "bin" / "p2o"), *args], timeout=timeout)


def test_the_wheel_carries_programs_meta_prompts_benchmarks_and_recipes(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "p2o/_data/programs/math_cot.py",
        "p2o/_data/programs/toy.py",
        "p2o/_data/programs/meta_prompts/default.md",
        "p2o/_data/evals/aime24.yaml",
        "p2o/_data/configs/toy_evolve.yaml",
        "p2o/_data/configs/paper/deepscaler_p2o_teacher.yaml",
        "p2o/_data/configs/accelerate/zero3.yaml",
    ):
        assert name in names, name
    # Every file of the checkout's folders is in the wheel.
    for folder in ("programs", "evals", "configs"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                assert f"p2o/_data/{path.relative_to(ROOT).as_posix()}" in names, path


LOOKUPS = """
import json, p2o
from p2o.templates import load_program, load_meta_prompt
from p2o.evaluation.benchmarks import load_benchmark
from p2o.resources import find_recipe
print(json.dumps({
    "p2o": p2o.__file__,
    "program": load_program("math_cot").source,
    "meta_prompt": str(load_meta_prompt("default").path),
    "benchmark": str(load_benchmark("aime24").path),
    "recipe": str(find_recipe("paper/deepscaler_p2o_teacher")),
}))
"""


def test_lookups_from_an_unrelated_folder(site, elsewhere):
    out = run_installed(site, elsewhere, ["-c", LOOKUPS])
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    for what, path in found.items():
        assert Path(path).is_relative_to(site / "p2o"), (what, path)  # the wheel's, not the checkout's
    assert found["recipe"].endswith("p2o/_data/configs/paper/deepscaler_p2o_teacher.yaml")


def test_eval_list_and_train_dry_run_from_an_unrelated_folder(site, elsewhere):
    out = run_p2o(site, elsewhere, "eval", "--list")
    assert out.returncode == 0, out.stderr
    assert "aime24" in out.stdout and "olympiadbench" in out.stdout and "toy_hard" in out.stdout
    out = run_p2o(site, elsewhere, "train", "--config", "paper/deepscaler_p2o_teacher", "--dry_run")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["method"] == "P2O" and plan["model"] == "Qwen/Qwen3-4B" and plan["program"] == "math_cot"
    assert list(elsewhere.iterdir()) == []  # nothing written where the user stands


@pytest.mark.slow
def test_toy_evolve_from_an_unrelated_folder(site, elsewhere, tmp_path):
    """A toy `p2o evolve` with the packaged recipe, program, meta-prompt and scripted teacher, on the
    tiny toy build (seconds; a cached one is reused)."""
    build = run_installed(
        site,
        elsewhere,
        [
            "-c",
            "import sys; from p2o.toy import ensure_toy_model; "
            "print(ensure_toy_model(seed=0, output=sys.argv[1], preset='tiny', progress=False))",
            str(tmp_path / "toy-model"),
        ],
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    out = run_p2o(
        site,
        elsewhere,
        "evolve",
        "--config",
        "toy_evolve",
        "--model_name_or_path",
        str(tmp_path / "toy-model"),
        "--output_dir",
        "out",
        "--max_samples",
        "16",
        "--num_generations",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--gepa_max_metric_calls",
        "40",
        "--min_hard_samples",
        "1",
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    phase = json.loads((elsewhere / "out" / "phase.json").read_text())
    assert phase["status"] == "complete" and phase["reflection"] == "toy-teacher"
    assert phase["metric_calls"] >= 40
    templates = json.loads((elsewhere / "out" / "templates.json").read_text())["templates"]
    assert templates and templates[0]["text"] == ""  # the toy program's empty seed
