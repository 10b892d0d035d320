"""`p2o eval --model PATH [--model PATH2 ...] --benchmarks aime24,math500,... --output_dir DIR`.

Generates with the vLLM offline engine when it is installed and a GPU is present, otherwise with
transformers in-process, or with a running OpenAI-compatible server (`--server URL`); scores with
each benchmark's verifier; reports avg@n and unbiased pass@k per benchmark and the mean over the
paper's six. Writes DIR/summary.json, DIR/summary.md, DIR/<model>/<bench>.jsonl and, with several
models, DIR/accuracy.png. Exit status: 0 when every (model, benchmark) ran, 1 when some failed
(each is named on stderr and in summary.json), 2 for a bad command line. Flags take underscores or
dashes (`--max_tokens`, `--max-tokens`), and `--config FILE` reads them from YAML (`p2o.cliutil`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from p2o.tasks.benchmarks import BenchmarkError, benchmark_groups, list_benchmarks, load_benchmark


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2o eval",
        description="Evaluate checkpoints (and prompt templates) on benchmarks: avg@n and pass@k.",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="PATH",
        help="Checkpoint directory or hub id; repeat for several. NAME=PATH names it in the report. With "
        "--server: the served model name. Omitted: the benchmarks' task default (a task that builds its own policy).",
    )
    p.add_argument(
        "--benchmarks",
        default=None,
        help=f"Comma-separated names or YAML paths; groups: {', '.join(benchmark_groups())}. See --list.",
    )
    p.add_argument("--list", action="store_true", help="List the benchmarks found and exit.")
    p.add_argument("--n", type=int, default=None, help="Completions per problem (default: each benchmark's).")
    p.add_argument(
        "--temperature", type=float, default=None, help="Sampling temperature; 0 = greedy (then n is 1)."
    )
    p.add_argument("--top-p", type=float, default=None, help="Nucleus sampling (default: each benchmark's).")
    p.add_argument("--max-tokens", type=int, default=None, help="Max new tokens (default: each benchmark's).")
    p.add_argument(
        "--pass-k", default=None, help="k of pass@k, e.g. 1,4,16 (default: powers of two up to n, and n)."
    )
    p.add_argument(
        "--backend",
        choices=("auto", "vllm", "transformers"),
        default="auto",
        help="auto (default): the vLLM offline engine when vLLM and a GPU are present, else transformers.",
    )
    p.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="An OpenAI-compatible server (vllm serve / trl vllm-serve / transformers serve) to generate "
        "with; --backend transformers for transformers serve.",
    )
    p.add_argument("--api-key", default=None, help="Bearer token for --server (default: none).")
    p.add_argument(
        "--template",
        type=Path,
        default=None,
        help="A template z: prompts become T(x, z). A text file, a templates.json of a prompt-evolution "
        "phase (the template that solves most dev samples, or --template-id), or an evolved program file "
        "(programs/*.json of a phase, or what p2o export wrote).",
    )
    p.add_argument(
        "--template-id", default=None, help="With a templates.json: the id of the template to use."
    )
    p.add_argument(
        "--program",
        default=None,
        help="A template program (a name in programs/, name@seed, a .py file or a dotted path) whose "
        "predictor runs the template: the text of --template becomes its instruction (its demos kept); "
        "without --template its seed is measured. Default: the program an evolved program file records, "
        "else a plain predictor whose instruction is the text. With --server every templated completion "
        "is a DSPy call of it, as in a prompt-evolution phase.",
    )
    p.add_argument(
        "--output_dir",
        "--output",
        dest="output_dir",
        type=Path,
        default=Path("runs/eval"),
        help="Output folder (default: runs/eval).",
    )
    p.add_argument(
        "--data-dir", type=Path, default=None, help="Folder of local benchmark files <name>.jsonl (offline)."
    )
    p.add_argument("--limit", type=int, default=None, help="Only the first N problems of each benchmark.")
    p.add_argument("--seed", type=int, default=0, help="Sampling seed (default: 0).")
    p.add_argument(
        "--batch-size", type=int, default=32, help="transformers: sequences per generate call (default: 32)."
    )
    p.add_argument(
        "--threads", type=int, default=16, help="Scoring threads and server requests in flight (default: 16)."
    )
    p.add_argument(
        "--chat-template-kwargs",
        default=None,
        help="JSON merged over the task's, e.g. '{\"enable_thinking\": false}'.",
    )
    p.add_argument(
        "--task-kwargs",
        default=None,
        help="JSON merged into every benchmark's task options, e.g. '{\"seed\": 1}' for a toy policy of world 1.",
    )
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM offline engine (default: 1).")
    p.add_argument(
        "--gpu-memory-utilization", type=float, default=0.9, help="vLLM offline engine (default: 0.9)."
    )
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM offline engine.")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")
    return p


def read_template(path: Path, template_id: str | None = None) -> str:
    """The template text of `--template`: a text file's content, or one entry of a phase's templates.json
    (`template_id`, else the one solving most dev samples, ties to the higher mean score)."""
    if not path.is_file():
        raise ValueError(f"--template {path}: no such file (a text file, or a phase's templates.json)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            p2o_info = (json.loads(text).get("metadata") or {}).get("p2o")
        except (json.JSONDecodeError, AttributeError):
            p2o_info = None
        if isinstance(p2o_info, dict) and "template" in p2o_info:  # an evolved program file
            if template_id is not None:
                raise ValueError("--template-id needs --template pointing at a templates.json")
            print(f"p2o eval: template {p2o_info.get('template_id')} of program file {path}", file=sys.stderr)
            text = str(p2o_info["template"])
            if not text.strip():
                raise ValueError(f"--template {path}: the template is empty")
            return text
        try:
            entries = json.loads(text)["templates"]
            by_id = {str(t["id"]): t for t in entries}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"--template {path}: not a templates.json of a prompt-evolution phase ({e})"
            ) from e
        if template_id is not None:
            if template_id not in by_id:
                raise ValueError(f"--template-id {template_id}: not in {path} (ids: {', '.join(by_id)})")
            chosen = by_id[template_id]
        elif not entries:
            raise ValueError(f"--template {path}: holds no templates")
        else:
            chosen = max(entries, key=lambda t: (t.get("dev_solved", 0), t.get("mean", 0.0)))
        print(f"p2o eval: template {chosen['id']} of {path}", file=sys.stderr)
        text = str(chosen["text"])
    elif template_id is not None:
        raise ValueError("--template-id needs --template pointing at a templates.json")
    if not text.strip():
        raise ValueError(f"--template {path}: the template is empty")
    return text


def _is_program_file(path: Path) -> bool:
    if path.suffix != ".json":
        return False
    try:
        return isinstance(
            (json.loads(path.read_text(encoding="utf-8")).get("metadata") or {}).get("p2o"), dict
        )
    except (json.JSONDecodeError, AttributeError, OSError):
        return False


def _fail(msg: str) -> int:
    print(f"p2o eval: error: {msg}", file=sys.stderr)
    return 2


def _default_model(benchmarks: list[str]) -> str | None:
    """The task's own policy when every benchmark's task has one (the toy world), else None."""
    from p2o.tasks.benchmarks import expand_names

    found: set[str] = set()
    for name in expand_names(benchmarks):
        try:
            task = load_benchmark(name).load_task()
        except BenchmarkError:
            return None
        if task.default_model is None:
            return None
        found.add(str(task.default_model()))
    return found.pop() if len(found) == 1 else None


def main(argv: list[str] | None = None) -> int:
    from p2o.cliutil import parse_args

    args = parse_args(build_parser(), argv)
    if args.list:
        for name in list_benchmarks():
            try:
                b = load_benchmark(name)
                print(f"{name:16s} {b.description or ''}")
            except BenchmarkError as e:
                print(f"{name:16s} (invalid: {e})")
        for group, members in benchmark_groups().items():
            print(f"{group:16s} group: {', '.join(members)}")
        return 0
    if not args.benchmarks:
        return _fail("--benchmarks is required (e.g. --benchmarks aime24,math500, or paper); see --list")
    for flag, value, low in (
        ("--n", args.n, 1),
        ("--max-tokens", args.max_tokens, 1),
        ("--limit", args.limit, 1),
    ):
        if value is not None and value < low:
            return _fail(f"{flag} must be >= {low} (got {value})")
    if args.temperature is not None and args.temperature < 0:
        return _fail(f"--temperature must be >= 0 (got {args.temperature})")
    template = None
    program = None
    try:
        if args.template is not None:
            template = read_template(args.template, args.template_id)
            if _is_program_file(args.template):
                if args.program:
                    return _fail(f"--program: {args.template} is a program file, which names its program")
                from p2o.templates.programs import evolved_program

                program, template = evolved_program(args.template), None
        if args.program:
            from p2o.templates.programs import load_program

            program = load_program(args.program)
    except ValueError as e:  # ProgramError is a ValueError too
        return _fail(str(e))
    parsed: dict[str, dict | None] = {}
    for flag in ("chat_template_kwargs", "task_kwargs"):
        raw = getattr(args, flag)
        parsed[flag] = None
        if raw:
            name = "--" + flag.replace("_", "-")
            try:
                parsed[flag] = json.loads(raw)
            except json.JSONDecodeError as e:
                return _fail(f"{name}: not JSON ({e})")
            if not isinstance(parsed[flag], dict):
                return _fail(f"{name}: must be a JSON object")
    models = list(args.model)
    if not models:
        default = None if args.server else _default_model(args.benchmarks.split(","))
        if default is None:
            return _fail("--model is required (a checkpoint directory or hub id; repeat for several)")
        models = [default]
    from p2o.evaluation.metrics import parse_ks

    try:
        parse_ks(args.pass_k, 1 << 30)
    except ValueError as e:
        return _fail(str(e))

    from p2o.evaluation.runner import evaluate

    report = evaluate(
        models,
        args.benchmarks,
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        template=template,
        program=program,
        backend=args.backend,
        server=args.server,
        api_key=args.api_key,
        output_dir=args.output_dir,
        data_dir=args.data_dir,
        limit=args.limit,
        seed=args.seed,
        pass_k=args.pass_k,
        batch_size=args.batch_size,
        num_threads=args.threads,
        chat_template_kwargs=parsed["chat_template_kwargs"],
        task_kwargs=parsed["task_kwargs"],
        vllm_kwargs={
            "tensor_parallel_size": args.tensor_parallel_size,
            "gpu_memory_utilization": args.gpu_memory_utilization,
            "max_model_len": args.max_model_len,
        },
        progress=not args.no_progress,
    )
    _print_table(report)
    out = args.output_dir
    print(f"p2o eval: wrote {out / 'summary.json'} and {out / 'summary.md'}", file=sys.stderr)
    for err in report.errors:
        print(f"p2o eval: FAILED {err}", file=sys.stderr)
    return 1 if report.errors else 0


def _print_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="p2o eval: accuracy (%)")
    table.add_column("model")
    for b in report.benchmarks:
        table.add_column(b, justify="right")
    table.add_column("mean", justify="right")
    for m in report.models:
        rows = report.results[m]
        cells = []
        for b in report.benchmarks:
            r = rows.get(b)
            cells.append("error" if r is None or r.avg is None else f"{100 * r.avg:.1f} ({r.metric})")
        mean = report.average(m)["mean"]
        cells.append("—" if mean is None else f"{100 * mean:.1f}")
        table.add_row(m, *cells)
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
