"""What an evaluation writes: `summary.json`, `summary.md` and, with several models, a bar chart.

DIR/summary.json          settings, per (model, benchmark) metrics, averages, errors
DIR/summary.md            the same as tables: avg@n per benchmark + averages, then pass@k
DIR/<model>/<bench>.jsonl per problem: prompt, completions, verdicts (written by the runner)
DIR/accuracy.png          grouped bars, one group per benchmark (two or more models)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2o.files import write_json_atomic
from p2o.tasks.benchmarks import PAPER_BENCHMARKS

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
CHART = "accuracy.png"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def summary_markdown(report: Any) -> str:
    """Markdown tables of a report: accuracy (avg@n, %) per benchmark, then pass@k."""
    lines = ["# p2o eval", ""]
    template = report.settings.get("template")
    if template:
        lines += ["Prompts rendered with the template T(x, z), z =", "", "```", template, "```", ""]
    header = ["model"]
    for b in report.benchmarks:
        r = next((rows[b] for rows in report.results.values() if b in rows and rows[b].ok), None)
        header.append(f"{b} ({r.metric})" if r else b)
    has_paper = all(b in report.benchmarks for b in PAPER_BENCHMARKS)
    header += ["avg (paper 6)"] if has_paper else []
    header += ["mean"]
    lines += ["## Accuracy (%)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in report.models:
        rows = report.results.get(m, {})
        cells = [m] + [_pct(rows[b].avg) if b in rows and rows[b].ok else "error" for b in report.benchmarks]
        avg = report.average(m)
        if has_paper:
            cells.append(_pct(avg["paper_avg"]))
        cells.append(_pct(avg["mean"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    ks = sorted(
        {k for rows in report.results.values() for r in rows.values() for k in r.pass_at_k},
        key=lambda s: int(s.split("@")[1]),
    )
    if any(k != "pass@1" for k in ks):
        lines += ["## pass@k (%)", "", "| model | benchmark | n | " + " | ".join(ks) + " |"]
        lines.append("|" + "---|" * (3 + len(ks)))
        for m in report.models:
            for b, r in report.results.get(m, {}).items():
                if r.ok and r.n > 1:
                    cells = [_pct(r.pass_at_k.get(k)) if k in r.pass_at_k else "" for k in ks]
                    lines.append(f"| {m} | {b} | {r.n} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += [
        "## Runs",
        "",
        "| model | benchmark | problems | n | T | truncated | tokens | seconds | source |",
    ]
    lines.append("|" + "---|" * 9)
    for m in report.models:
        for b, r in report.results.get(m, {}).items():
            if r.ok:
                lines.append(
                    f"| {m} | {b} | {r.num_problems} | {r.n} | {r.temperature:g} | {_pct(r.truncated_frac)}% "
                    f"| {r.mean_completion_tokens:.0f} | {r.seconds:.1f} | {r.source} |"
                )
    errors = report.errors
    if errors:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def plot_accuracy(report: Any, path: Path) -> Path | None:
    """Grouped bars of avg@n (%) per benchmark (and the mean), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = [b for b in report.benchmarks if any(report.results[m].get(b, None) for m in report.models)]
    groups = [*benches, "mean"]
    width = 0.8 / max(1, len(report.models))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(groups) + 2), 4))
    for i, m in enumerate(report.models):
        rows = report.results[m]
        values = [100 * (rows[b].avg or 0) if b in rows and rows[b].ok else 0 for b in benches]
        mean = report.average(m)["mean"]
        values.append(100 * mean if mean is not None else 0)
        xs = [g + (i - (len(report.models) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=m)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylabel("accuracy, avg@n (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("p2o eval")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: Any, out_dir: str | Path, *, final: bool = True) -> dict[str, Path]:
    """Write summary.json and summary.md (and the chart when final, with two or more models)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    data["complete"] = final
    files = {"summary.json": out / SUMMARY_JSON, "summary.md": out / SUMMARY_MD}
    write_json_atomic(files["summary.json"], data)
    files["summary.md"].write_text(summary_markdown(report), encoding="utf-8")
    if final and len(report.models) >= 2:
        chart = plot_accuracy(report, out / CHART)
        if chart is not None:
            files["chart"] = chart
    return files
