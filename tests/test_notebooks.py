"""Every notebook in notebooks/ runs top to bottom at smoke size (`P2O_NOTEBOOK_SMOKE=1`).

The kernel is a private kernel spec on this interpreter (`sys.executable`), so the test needs no
installed `python3` spec and cannot pick up another environment's one from the user's Jupyter folders.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def _kernel_manager(kernels_dir: Path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec = kernels_dir / "p2o-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "p2o test kernel",
                "language": "python",
            }
        )
    )
    ksm = KernelSpecManager(kernel_dirs=[str(kernels_dir)], ensure_native_kernel=False)
    return AsyncKernelManager(kernel_name="p2o-test", kernel_spec_manager=ksm)


def _outputs(nb, kind: str) -> str:
    """The executed notebook's outputs of one kind: "stream" text, or a MIME type such as "text/markdown"."""
    outs = [o for c in nb.cells for o in c.get("outputs", [])]
    if kind == "stream":
        return "".join(o.get("text", "") for o in outs if o.get("output_type") == "stream")
    return "\n".join(str(o["data"][kind]) for o in outs if kind in o.get("data", {}))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_at_smoke_size(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    out = tmp_path / "out"
    monkeypatch.setenv("P2O_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("P2O_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it cleared"
    client = NotebookClient(
        nb,
        km=_kernel_manager(tmp_path / "kernels"),
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(ROOT)}},  # the kernel's cwd: the repository root
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    assert all(
        out.get("output_type") != "error" for c in nb.cells for out in c.get("outputs", [])
    )  # every cell ran

    if path.name == "quickstart.ipynb":
        saved = json.loads((out / "results.json").read_text())
        assert saved["methods"].keys() == {"grpo", "grpo_2k", "p2o_teacher"}
        assert "| p2o_teacher |" in _outputs(nb, "text/markdown")  # results.md shown as Markdown
        assert _outputs(nb, "image/png")  # curves.png shown
        printed = _outputs(nb, "stream")
        assert "p2o_teacher" in printed and "hard acc" in printed  # the plain accuracy table
        assert "round-001" in printed  # the evolved-templates cell reported the phase round
        assert "templated rows logged in total" in printed  # the trajectories cell ran to its end

    if path.name == "templates.ipynb":
        printed = _outputs(nb, "stream")
        assert "seed template ''" in printed  # the ChainOfThought program loaded, no template yet
        assert "best.json" in printed and "evolved template:" in printed
        assert "messages sent == render_augmented(x, z): True" in printed
        assert "User message" in printed or "user" in printed.lower()  # dspy.inspect_history printed
        assert (out / "phase" / "programs" / "best.json").exists()
