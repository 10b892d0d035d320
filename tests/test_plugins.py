"""Plug-ins (`p2o.plugins`): the toy world registers through the same registries as a user's package,
and p2o without the toy world is a whole toolkit."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from p2o import plugins

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_plugins(monkeypatch):
    """Plug-ins loaded again (the registries are kept; a plug-in module already imported is not rerun)."""
    monkeypatch.setattr(plugins, "_loaded", False)
    monkeypatch.setattr(plugins, "_REFLECTORS", dict(plugins._REFLECTORS))
    monkeypatch.setattr(plugins, "_COMMANDS", dict(plugins._COMMANDS))


def entry_points_of(group_values: dict[str, str]):
    """`importlib.metadata.entry_points` as if an installed distribution declared these p2o plug-ins."""
    real = importlib.metadata.entry_points

    def entry_points(group=None, **kw):
        if group != plugins.ENTRY_POINT_GROUP:
            return real(group=group, **kw) if group is not None else real(**kw)
        return [
            importlib.metadata.EntryPoint(name=name, value=value, group=group)
            for name, value in group_values.items()
        ]

    return entry_points


def test_the_toy_world_registers_as_a_plugin():
    from p2o.cli import commands
    from p2o.evolve import make_reflector
    from p2o.tasks import list_tasks, list_verifiers
    from p2o.tasks.benchmarks import expand_names

    assert "toy" in list_tasks() and "toy" in list_verifiers()
    assert "toy-teacher" in plugins.list_reflectors()
    assert make_reflector("toy-teacher", temperature=1.0, max_tokens=64).name == "toy-teacher"
    assert expand_names("toy_all") == ["toy", "toy_hard", "toy_easy"]
    assert commands()["toy"][0] == "p2o.toy.cli" and commands()["demo"][0] == "p2o.demo"


def test_an_installed_plugin_is_found_by_its_entry_point(fresh_plugins, monkeypatch, tmp_path):
    (tmp_path / "my_p2o_plugin.py").write_text(
        textwrap.dedent(
            """
            from p2o.plugins import register_reflector

            @register_reflector("my-teacher")
            def make(seed=0, **options):
                return lambda prompt: f"```\\nseed {seed}, {options['max_tokens']} tokens\\n```"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points_of({"mine": "my_p2o_plugin"}))
    from p2o.config import check_reflection
    from p2o.evolve import make_reflector

    check_reflection("my-teacher")  # a config may name it
    reflector = make_reflector("my-teacher", temperature=1.0, max_tokens=64, seed=3)
    assert reflector.name == "my-teacher" and reflector("x").text == "```\nseed 3, 64 tokens\n```"


def test_a_broken_plugin_is_skipped_with_a_warning_that_names_it(fresh_plugins, monkeypatch, tmp_path):
    (tmp_path / "broken_p2o_plugin.py").write_text("import not_installed_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        entry_points_of({"broken": "broken_p2o_plugin", "gone": "uninstalled_p2o_plugin"}),
    )
    with pytest.warns(UserWarning, match="broken_p2o_plugin.*not_installed_anywhere") as caught:
        plugins.load_plugins()
    assert not any("uninstalled_p2o_plugin" in str(w.message) for w in caught)  # gone: nothing to say


def test_unknown_reflection_names_what_is_registered():
    from p2o.config import ConfigError, P2OConfig
    from p2o.evolve import ReflectionError, make_reflector

    with pytest.raises(ReflectionError, match=r"registered: .*toy-teacher"):
        make_reflector("nobody", temperature=1.0, max_tokens=64)
    with pytest.raises(ConfigError, match=r"reflection: must be one of .*toy-teacher"):
        P2OConfig(output_dir="/tmp/unused", reflection="nobody", use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match="built in"):
        plugins.register_reflector("self")


# Run in a fresh interpreter where `import p2o.toy` fails, as if p2o/toy/ had been deleted.
NO_TOY_SCRIPT = r"""
import importlib, json, pkgutil, sys, warnings
from pathlib import Path


class NoToy:
    def find_spec(self, name, path=None, target=None):
        if name in ("p2o.toy", "p2o.demo") or name.startswith("p2o.toy."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, NoToy())
sys.path.insert(0, sys.argv[1])  # the repository root, for tests.conftest

import p2o

with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)  # a missing toy world is not worth a warning
    from p2o.plugins import list_reflectors, register_reflector
    from p2o.tasks import list_tasks, register_task

    assert "toy" not in list_tasks() and "toy-teacher" not in list_reflectors()
# Every core module imports.
for m in pkgutil.walk_packages(p2o.__path__, "p2o."):
    if m.name.split(".")[1] not in ("toy", "demo"):
        importlib.import_module(m.name)

from p2o.cli import commands
from p2o.config import P2OConfig
from p2o.evolve import run_phase
from p2o.policy import PolicyServer
from p2o.tasks import Sample
from tests.conftest import build_tiny_policy, first_word_task

out = Path(sys.argv[2])
prompts = []


@register_task("first-word")
def first_word(**_):
    return first_word_task()


@register_reflector("scripted")
def scripted(seed=0, **_):
    def reflect(prompt):
        prompts.append(prompt)
        return "```\nthink step by step\n```"

    return reflect


config = P2OConfig(
    output_dir=str(out), reflection="scripted", program="math_cot", gepa_max_metric_calls=12,
    gepa_max_tokens=2, gepa_num_threads=2, num_generations=2, per_device_train_batch_size=2,
    use_cpu=True, bf16=False, report_to="none",
)
from p2o.tasks import get_task

task = get_task("first-word")
samples = [Sample(f"s{i}", f"what {i} + {i} ?", "never") for i in range(4)]
policy = build_tiny_policy(out / "policy")
with PolicyServer(policy, log_dir=out, timeout=180) as server:
    result = run_phase(config, task, samples, server, out / "phase", progress=False)
print(json.dumps({
    "commands": sorted(commands()),
    "toy_loaded": any(name.startswith("p2o.toy") for name in sys.modules),
    "status": result.stats["status"],
    "reflection": result.stats["reflection"],
    "reflection_calls": len(prompts),
}))
"""


@pytest.mark.slow
def test_p2o_without_the_toy_world_runs_a_phase_with_a_users_reflector(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", NO_TOY_SCRIPT, str(ROOT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["toy_loaded"]
    assert "toy" not in report["commands"] and "demo" not in report["commands"]
    assert {"train", "evolve", "eval"} <= set(report["commands"])
    assert report["status"] == "complete" and report["reflection"] == "scripted"
    assert report["reflection_calls"] >= 1
