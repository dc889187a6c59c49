"""The notebooks: valid nbformat with stored, error-free outputs, and they run in a Jupyter kernel in quick mode
(tiny networks, short budgets; ``MRQ_NOTEBOOK_QUICK=1``). A last cell added here checks what each one produced."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CLI_THREADS

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# What each notebook must have produced (run in its kernel after its own cells).
CHECKS = {
    "01_mrq_in_plain_torchrl.ipynb": """
assert rl_updates > 0 and buffer.num_transitions > 0
assert {"loss_value", "loss_policy"} <= set(metrics) and all(torch.isfinite(v) for v in metrics.values())
assert same
""",
    "02_quickstart.ipynb": """
assert sorted(curve) == [0, 150, 300] and all(np.isfinite(list(curve.values())))
assert np.isfinite(test.trainer.callback_metrics["test/return"].item()) and test.model.env_steps == 300
assert frames.shape == (501, 240, 320, 3) and len(list(video_dir.glob("*.mp4"))) == 1
""",
    "03_compare_to_the_paper.ipynb": """
assert sorted(curves) == ["Dmc-cartpole-balance"] and sorted(curves["Dmc-cartpole-balance"]) == [0]
assert {"report.md", "aggregate.png", "Dmc-cartpole-balance.png"} <= {p.name for p in written}
assert "| Dmc-cartpole-balance |" in text
""",
}


def test_every_notebook_has_a_check():
    assert sorted(CHECKS) == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook_is_valid_and_its_stored_outputs_are_clean(name):
    import nbformat

    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)  # raises on any schema problem (cell ids included: nbformat 4.5)
    assert notebook.nbformat == 4 and notebook.nbformat_minor >= 5
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count is not None for cell in code), "execute it before committing"
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "run top to bottom, once"
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors[0].get("ename")
    assert any(cell.outputs for cell in code), "stored outputs"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook_runs_in_quick_mode(name, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MRQ_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", str(CLI_THREADS))
    monkeypatch.delenv("SWEEP_ROOT", raising=False)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(CHECKS[name].strip()))
    client = NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell and its traceback) on any failure
