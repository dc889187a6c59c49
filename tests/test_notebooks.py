"""The notebooks run: their code cells are executed in order in quick mode (tiny networks, short budget)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_quick_mode(path, monkeypatch, tmp_path):
    monkeypatch.setenv("MRQ_NOTEBOOK_QUICK", "1")
    monkeypatch.chdir(tmp_path)
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert cells, f"{path.name} has no code cells"
    namespace: dict = {}
    for cell in cells:
        exec(compile("".join(cell["source"]), f"{path.name}", "exec"), namespace)
    # The plain-TorchRL loop must actually have trained: RL updates happened and the last metrics are finite.
    if "rl_updates" in namespace:
        assert namespace["rl_updates"] > 0
        assert namespace["buffer"].num_transitions > 0
        metrics = namespace["metrics"]
        assert {"loss_value", "loss_policy"} <= set(metrics)
        assert all(torch.isfinite(value) for value in metrics.values())
