"""`p2o rehearse`: the paper's recipes run end to end on CPU through the code paths of a GPU run.

Each recipe in `configs/paper/` runs *unchanged except for sizes* (steps, batch, lengths, budget)
as `p2o train --config RECIPE`, in its own process, with small stand-ins for what cannot be reached
here (`p2o.rehearse.standins`):

- the recipe's model (`Qwen/Qwen3-4B`) is a tiny random Qwen3 written into a Hugging Face cache
  under that id; every process runs with `HF_HUB_OFFLINE=1` and finds it by the id alone;
- the recipe's data (`data/deepscaler/train_5k.jsonl`, ...) is made by `p2o data deepscaler|deepmath
  --source FILE` from a local file in the hub dataset's own schema;
- Teacher-Ref goes through LiteLLM to a scripted OpenAI-compatible endpoint on loopback, reached the
  way a user reaches any endpoint: `OPENAI_API_BASE` and `OPENAI_API_KEY` in the environment;
- Self-Ref (`reflection: initial`) serves the initial model by its hub id on its own server.

Then: one recipe under `accelerate launch` with two processes (gloo); `p2o eval` on a trained model
with local benchmark files; a run killed mid-training (`kill -9` of its process group) and resumed
with `--resume`; and a run whose teacher refuses the key, which must stop before training.

Writes `DIR/rehearsal.json` (per recipe: each stage's status and seconds, each phase's status,
reflection calls made and answered) and exits 1 when any stage or phase failed.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from p2o.errors import GROUP_STILL_HELD
from p2o.rehearse.standins import ScriptedTeacher, write_cached_model, write_hub_schema_data

SOURCE_ROWS = {"deepscaler": 5600, "deepmath": 6000}  # enough for the recipes' 500 held out + 5K
KEY_VARIABLE = "OPENAI_API_KEY"  # the recipes' teacher is `teacher:openai/...`: LiteLLM reads these two
BASE_VARIABLE = "OPENAI_API_BASE"


def sizes(config: dict[str, Any], steps: int, processes: int = 1) -> list[str]:
    """The size overrides: everything else of the recipe stays as written."""
    k = int(config.get("num_generations", 6))
    per_device = max(1, k // processes)
    out = {
        "max_steps": steps,
        "generation_batch_size": 4 * k,
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": 1,
        "max_completion_length": 24,
        "save_steps": 2,
        "logging_steps": 1,
    }
    if config.get("max_phases") != 0:
        out.update(
            {
                "phase_every_steps": 2,
                "phase_after_last_step": True,  # a short run: two rounds in 4 steps
                "min_hard_samples": 4,
                "gepa_max_metric_calls": 12,
                "reflection_max_tokens": 64,
            }
        )
    args: list[str] = []
    for key, value in out.items():
        args += [f"--{key}", str(value)]
    return args


class Rehearsal:
    def __init__(self, recipes: list[Path], output: Path, *, steps: int = 4, log: Any = None):
        self.recipes = recipes
        self.out = output.resolve()
        self.steps = steps
        self.cache = self.out / "hf-cache"
        self.key = "rehearsal-" + secrets.token_hex(16)  # never written by p2o: checked at the end
        self.teacher = ScriptedTeacher(key=self.key, model="scripted")
        self.report: dict[str, Any] = {"stand_ins": {}, "recipes": {}, "checks": {}}
        self.log = log or (lambda msg: print(f"p2o rehearse: {msg}", file=sys.stderr, flush=True))

    # ------------------------------------------------------------------ processes

    def env(self, *, key: str | None = None, processes: int = 1) -> dict[str, str]:
        env = dict(os.environ)
        if processes > 1:
            env.update({"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "HF_HUB_CACHE": str(self.cache),
                "HF_HUB_DISABLE_TELEMETRY": "1",
                BASE_VARIABLE: self.teacher.api_base,
                KEY_VARIABLE: key if key is not None else self.key,
                "PYTHONUNBUFFERED": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        env.pop("HF_HOME", None)
        return env

    def run(
        self, name: str, argv: list[str], *, key: str | None = None, processes: int = 1, timeout: float = 900
    ) -> tuple[int, float]:
        log_path = self.out / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with log_path.open("w", encoding="utf-8") as f:
            f.write("$ " + " ".join(argv) + "\n")
            f.flush()
            proc = subprocess.Popen(
                argv,
                cwd=self.out,
                env=self.env(key=key, processes=processes),
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = -9
        return code, time.perf_counter() - t0

    def p2o(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "p2o.cli", *args]

    # ------------------------------------------------------------------ stages

    def train_args(
        self, recipe: Path, out_dir: Path, steps: int, processes: int = 1
    ) -> tuple[dict[str, Any], list[str]]:
        """(the recipe's YAML, `p2o train` arguments: the recipe as written, only its sizes set)."""
        import yaml

        config = yaml.safe_load(recipe.read_text())
        argv = [
            "--config",
            str(recipe.resolve()),
            "--output_dir",
            str(out_dir),
            *sizes(config, steps, processes),
        ]
        return config, argv

    def setup(self) -> None:
        import yaml

        self.out.mkdir(parents=True, exist_ok=True)
        models = sorted({str(yaml.safe_load(r.read_text())["model_name_or_path"]) for r in self.recipes})
        for model in models:
            path = write_cached_model(model, self.cache)
            self.report["stand_ins"][model] = f"tiny random Qwen3 (stand-in) at {path}"
        self.teacher.start()
        self.report["stand_ins"]["teacher"] = (
            f"scripted OpenAI-compatible endpoint (stand-in) at {self.teacher.api_base}, reached through LiteLLM "
            f"with {BASE_VARIABLE} and {KEY_VARIABLE}"
        )
        kinds = sorted({"deepmath" if r.stem.startswith("deepmath") else "deepscaler" for r in self.recipes})
        for kind in kinds:
            source = write_hub_schema_data(kind, self.out / "sources" / f"{kind}.jsonl", SOURCE_ROWS[kind])
            code, secs = self.run(
                f"data-{kind}", self.p2o("data", kind, "--source", str(source), "--sizes", "5000")
            )
            self.report["stand_ins"][f"data_{kind}"] = {
                "source": f"{source} ({SOURCE_ROWS[kind]} rows in the hub schema, stand-in)",
                "status": "done" if code == 0 else f"failed (exit {code})",
                "seconds": round(secs, 2),
            }
        eval_dir = self.out / "data" / "eval-standin"  # the benchmarks' own schemas
        write_hub_schema_data("deepscaler", eval_dir / "aime24.jsonl", 8, seed=6)
        rows = (
            write_hub_schema_data("deepscaler", eval_dir / "math500.jsonl", 8, seed=5)
            .read_text()
            .splitlines()
        )
        (eval_dir / "math500.jsonl").write_text(
            "".join(
                json.dumps({**json.loads(r), "unique_id": f"test/standin/{i}.json"}) + "\n"
                for i, r in enumerate(rows)
            )
        )

    def recipe(
        self, recipe: Path, *, processes: int = 1, name: str | None = None, extra: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        name = name or recipe.stem
        out_dir = self.out / "runs" / name
        config, argv = self.train_args(recipe, out_dir, self.steps, processes)
        argv += extra
        if processes > 1:
            # On CPU accelerate starts several processes through torchrun only with --multi_gpu and
            # ACCELERATE_USE_CPU=1 (gloo); `--cpu` alone would need mpirun and run one process.
            cmd = [
                sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "0", "-m", "p2o.train.cli", *argv,
            ]  # fmt: skip
        else:
            cmd = self.p2o("train", *argv)
        before = self.teacher.stats()
        code, secs = self.run(name, cmd, processes=processes)
        after = self.teacher.stats()
        stage = {"status": "done" if code == 0 else "failed", "exit_code": code, "seconds": round(secs, 2)}
        entry: dict[str, Any] = {"recipe": str(recipe), "processes": processes, "train": stage, "phases": []}
        log_text = (self.out / "logs" / f"{name}.log").read_text(encoding="utf-8", errors="replace")
        if GROUP_STILL_HELD in log_text:
            # p2o train could not free its gloo group at the end: such a run can abort at exit
            stage["status"] = "failed"
            stage["error"] = "the process group outlived p2o train (its gloo threads run on at exit)"
        summary_path = out_dir / "train_summary.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            for r in summary.get("rounds", []):
                ph = r.get("phase") or {}
                entry["phases"].append(
                    {
                        "round": r["round"],
                        "step": r.get("global_step"),
                        "status": r.get("status"),
                        "error": r.get("error"),
                        "reflection_calls": ph.get("reflection_calls"),
                        "metric_calls": ph.get("metric_calls"),
                        "seconds": r.get("seconds"),
                    }
                )
            entry["global_step"] = summary.get("global_step")
            entry["world_size"] = summary.get("world_size")
            if entry["world_size"] != processes:
                stage["status"] = "failed"
                stage["error"] = f"ran {entry['world_size']} processes, not {processes}"
        elif code == 0:
            stage["status"] = "failed"
            stage["error"] = f"no {summary_path}"
        config.update({k.lstrip("-"): v for k, v in zip(extra[::2], extra[1::2], strict=True)})
        if str(config.get("reflection", "")).startswith("teacher:"):
            entry["teacher_requests"] = after["calls"] - before["calls"]
            entry["teacher_answered"] = after["answered"] - before["answered"]
        wants_phases = config.get("max_phases") != 0
        if wants_phases and not any(p["status"] == "done" for p in entry["phases"]):
            stage["status"] = "failed"
            stage.setdefault("error", "no phase ran")
        entry["final_model"] = str(out_dir / "final")
        self.log(
            f"{name}: {stage['status']} in {secs:.1f} s; phases "
            + (", ".join(p["status"] for p in entry["phases"]) or "none")
        )
        return entry

    def evaluate(self, model: Path) -> dict[str, Any]:
        out = self.out / "runs" / "eval"
        code, secs = self.run(
            "eval",
            self.p2o(
                "eval", "--model", str(model), "--benchmarks", "math500,aime24",
                "--data-dir", str(self.out / "data" / "eval-standin"), "--limit", "4", "--n", "2",
                "--max-tokens", "16", "--output", str(out),
            ),
        )  # fmt: skip
        entry: dict[str, Any] = {
            "status": "done" if code == 0 else "failed",
            "exit_code": code,
            "seconds": round(secs, 2),
        }
        summary = out / "summary.json"
        if summary.exists():
            entry["summary"] = str(summary)
        elif code == 0:
            entry["status"] = "failed"
        self.log(f"eval: {entry['status']} in {secs:.1f} s")
        return entry

    def kill_and_resume(self, recipe: Path) -> dict[str, Any]:
        """Start a run, kill -9 its whole process group once a checkpoint exists, resume it."""
        out_dir = self.out / "runs" / "killed-and-resumed"
        _, argv = self.train_args(recipe, out_dir, 6)
        log_path = self.out / "logs" / "killed.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with log_path.open("w", encoding="utf-8") as f:
            proc = subprocess.Popen(
                self.p2o("train", *argv), cwd=self.out, env=self.env(), stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            killed_after = None
            while proc.poll() is None and time.perf_counter() - t0 < 600:
                ckpts = sorted(out_dir.glob("checkpoint-*/trainer_state.json"))
                if ckpts:
                    time.sleep(0.5)
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed_after = ckpts[-1].parent.name
                    break
                time.sleep(0.2)
            proc.wait()
        entry: dict[str, Any] = {"killed_after": killed_after, "kill_exit_code": proc.returncode}
        code, _ = self.run("resumed", self.p2o("train", *argv, "--resume"))
        summary = out_dir / "train_summary.json"
        step = json.loads(summary.read_text()).get("global_step") if summary.exists() else None
        ok = killed_after is not None and code == 0 and step == 6
        entry.update(
            {
                "status": "done" if ok else "failed",
                "resume_exit_code": code,
                "global_step": step,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        self.log(f"kill -9 after {killed_after}, resume: {entry['status']} (step {step})")
        return entry

    def refused_key(self, recipe: Path) -> dict[str, Any]:
        """A teacher that refuses the key must stop the run before step 1, naming the variable."""
        out_dir = self.out / "runs" / "refused-key"
        _, argv = self.train_args(recipe, out_dir, self.steps)
        code, secs = self.run("refused-key", self.p2o("train", *argv), key="not-the-key")
        text = (self.out / "logs" / "refused-key.log").read_text(encoding="utf-8", errors="replace")
        stopped = [line for line in text.splitlines() if "p2o train: stopped" in line]
        steps_run = not (out_dir / "train_summary.json").exists() or json.loads(
            (out_dir / "train_summary.json").read_text()
        ).get("global_step", 0)
        ok = code != 0 and bool(stopped) and KEY_VARIABLE in stopped[0] and steps_run == 0
        entry = {"status": "done" if ok else "failed", "exit_code": code, "message": stopped[0] if stopped else None,
                 "steps_trained": steps_run, "seconds": round(secs, 2)}  # fmt: skip
        self.log(f"refused key: {'stopped as it must' if ok else 'DID NOT STOP'}: {entry['message']}")
        return entry

    def key_leaks(self) -> list[str]:
        """Every file under the output folder that holds the teacher key's value (must be none)."""
        hits = []
        needle = self.key.encode()
        for path in self.out.rglob("*"):
            if path.is_file() and "hf-cache" not in path.parts:
                try:
                    if needle in path.read_bytes():
                        hits.append(str(path))
                except OSError:
                    continue
        return hits

    # ------------------------------------------------------------------ the whole thing

    def __call__(
        self, *, two_process: str | None, resume: str | None, refused: str | None, self_ref: str | None = None
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            self.setup()
            for recipe in self.recipes:
                self.report["recipes"][recipe.stem] = self.recipe(recipe)
            by_name = {r.stem: r for r in self.recipes}
            if two_process and two_process in by_name:
                self.report["recipes"][f"{two_process}@2proc"] = self.recipe(
                    by_name[two_process], processes=2, name=f"{two_process}-2proc"
                )
            if self_ref and self_ref in by_name:  # `reflection: self`: the live policy reflects
                self.report["recipes"][f"{self_ref}@self"] = self.recipe(
                    by_name[self_ref], name=f"{self_ref}-self", extra=("--reflection", "self")
                )
            trained = [e for e in self.report["recipes"].values() if e["train"]["status"] == "done"]
            if trained:
                self.report["checks"]["eval"] = self.evaluate(Path(trained[0]["final_model"]))
            if resume and resume in by_name:
                self.report["checks"]["kill_and_resume"] = self.kill_and_resume(by_name[resume])
            if refused and refused in by_name:
                self.report["checks"]["refused_key"] = self.refused_key(by_name[refused])
        finally:
            self.teacher.stop()
        leaks = self.key_leaks()
        self.report["checks"]["key_not_written"] = {
            "status": "done" if not leaks else "failed",
            "files": leaks,
        }
        self.report["teacher"] = self.teacher.stats()
        self.report["seconds"] = round(time.perf_counter() - t0, 2)
        failed = [n for n, e in self.report["recipes"].items() if e["train"]["status"] != "done"]
        failed += [f"check:{n}" for n, c in self.report["checks"].items() if c["status"] != "done"]
        failed += [
            f"{n}:round-{p['round']}"
            for n, e in self.report["recipes"].items()
            for p in e["phases"]
            if p["status"] == "failed"
        ]
        self.report["status"] = "failed" if failed else "done"
        self.report["failed"] = failed
        (self.out / "rehearsal.json").write_text(json.dumps(self.report, indent=2) + "\n", encoding="utf-8")
        return self.report
