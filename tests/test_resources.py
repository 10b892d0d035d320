"""Where programs, meta-prompts, benchmarks and recipes are found (`p2o.resources`): the user's folders
before the packaged ones, recipes by name from any directory. The wheel itself is tested in
test_wheel.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2o.resources import (
    ResourceError,
    find_recipe,
    list_recipes,
    packaged_dir,
    search_dirs,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """An unrelated current directory, with no P2O_*_DIR set."""
    for var in ("P2O_PROGRAMS_DIR", "P2O_EVALS_DIR", "P2O_CONFIGS_DIR"):
        monkeypatch.delenv(var, raising=False)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_packaged_folders_are_the_checkouts_in_an_editable_install():
    # src/p2o/_data/<folder> links to the top-level folder: an editable install reads what you edit.
    for folder in ("programs", "evals", "configs"):
        assert packaged_dir(folder) == (ROOT / folder).resolve()
        assert (ROOT / "src/p2o/_data" / folder).is_symlink()


def test_lookup_order_env_then_cwd_then_packaged(elsewhere, tmp_path, monkeypatch):
    from p2o.evaluation.benchmarks import load_benchmark
    from p2o.templates import load_meta_prompt, load_program

    # Nothing of the user's: the packaged files.
    assert search_dirs("programs") == [elsewhere / "programs", packaged_dir("programs")]
    assert load_program("toy").source == str(packaged_dir("programs") / "toy.py")
    assert load_meta_prompt("default").path == packaged_dir("programs") / "meta_prompts" / "default.md"
    assert load_benchmark("toy").path == packaged_dir("evals") / "toy.yaml"

    # ./programs, ./evals shadow the packaged ones of the same name.
    (elsewhere / "programs" / "meta_prompts").mkdir(parents=True)
    (elsewhere / "programs" / "toy.py").write_text((ROOT / "programs/toy.py").read_text())
    (elsewhere / "programs" / "meta_prompts" / "default.md").write_text("mine <curr_param> <side_info>")
    (elsewhere / "evals").mkdir()
    (elsewhere / "evals" / "toy.yaml").write_text("name: toy\ntask: toy\ndescription: mine\n")
    assert load_program("toy").source == str(elsewhere / "programs" / "toy.py")
    assert load_meta_prompt("default").text == "mine <curr_param> <side_info>"
    assert load_benchmark("toy").description == "mine"
    assert load_program("math_cot").source == str(packaged_dir("programs") / "math_cot.py")  # not shadowed

    # $P2O_EVALS_DIR comes before ./evals.
    env = tmp_path / "env_evals"
    env.mkdir()
    (env / "toy.yaml").write_text("name: toy\ntask: toy\ndescription: from the environment\n")
    monkeypatch.setenv("P2O_EVALS_DIR", str(env))
    assert load_benchmark("toy").description == "from the environment"
    assert search_dirs("evals") == [env, elsewhere / "evals", packaged_dir("evals")]


def test_unknown_names_list_where_they_were_looked_for(elsewhere):
    from p2o.evaluation.benchmarks import BenchmarkError, list_benchmarks, load_benchmark
    from p2o.templates import ProgramError, list_programs, load_program

    with pytest.raises(
        ProgramError, match=r"no nope\.py in .*elsewhere/programs, .*programs\. Known: math_cot"
    ):
        load_program("nope")
    with pytest.raises(BenchmarkError, match="Known: aime24, aime25"):
        load_benchmark("nope")
    assert {"math_cot", "toy"} <= set(list_programs())
    assert {"aime24", "math500", "toy"} <= set(list_benchmarks())


def test_recipes_by_name_path_or_readme_spelling(elsewhere):
    teacher = packaged_dir("configs") / "paper" / "deepscaler_p2o_teacher.yaml"
    for spec in (
        "paper/deepscaler_p2o_teacher",
        "paper/deepscaler_p2o_teacher.yaml",
        "deepscaler_p2o_teacher",
        "deepscaler_p2o_teacher.yaml",
        "configs/paper/deepscaler_p2o_teacher.yaml",  # as the README writes it, from any directory
    ):
        assert find_recipe(spec) == teacher, spec
    assert find_recipe("toy_p2o") == packaged_dir("configs") / "toy_p2o.yaml"
    assert find_recipe("accelerate/zero3") == packaged_dir("configs") / "accelerate" / "zero3.yaml"
    assert {"toy_p2o", "paper/deepmath_grpo", "accelerate/fsdp2"} <= set(list_recipes())
    # An existing file is taken as it is; ./configs shadows the packaged recipes.
    mine = elsewhere / "configs" / "toy_p2o.yaml"
    mine.parent.mkdir()
    mine.write_text("task: toy\n")
    assert find_recipe("toy_p2o") == mine
    assert find_recipe(str(teacher)) == teacher
    with pytest.raises(ResourceError, match=r"recipe 'nope': no such file.*Known recipes: .*toy_p2o"):
        find_recipe("nope")


def test_an_ambiguous_bare_recipe_name_is_refused(elsewhere):
    for sub in ("a", "b"):
        (elsewhere / "configs" / sub).mkdir(parents=True)
        (elsewhere / "configs" / sub / "run.yaml").write_text("task: toy\n")
    with pytest.raises(ResourceError, match=r"ambiguous .*a/run, b/run"):
        find_recipe("run")
    assert find_recipe("b/run") == elsewhere / "configs" / "b" / "run.yaml"


def test_train_config_takes_a_packaged_recipe_from_any_directory(elsewhere, capsys):
    from p2o.config import ConfigError, parse_config
    from p2o.train.cli import main

    script_args, config = parse_config(
        ["--config", "paper/deepscaler_p2o_teacher", "--learning_rate", "2e-6"]
    )
    assert script_args.dataset == "data/deepscaler/train_5k.jsonl" and config.learning_rate == 2e-6
    _, config = parse_config(["--config=toy_p2o.yaml"])  # TRL reads only `--config FILE`; both work
    assert config.reflection == "toy-teacher"
    assert main(["--config", "deepmath_p2o_self", "--dry_run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["reflection"] == "initial" and plan["dataset"] == "data/deepmath/train_5k.jsonl"
    with pytest.raises(ConfigError, match="--config: recipe 'paper/nope'"):
        parse_config(["--config", "paper/nope"])
