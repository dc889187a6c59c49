"""``python -m mrq_lightning sweep`` and ``report`` end to end on embedded Ray (smoke overlay, one thread per run):
every (env, seed) runs as an ordinary fit in its own directory, a re-run skips finished runs, a sweep stopped by
SIGTERM resumes its interrupted run from the checkpoint it saved, bit-identically, and the report is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONFIGS, REPO, assert_same, cli_env, load_checkpoint, tensorboard_scalars

pytestmark = pytest.mark.slow

ENVS = ["Dmc-cartpole-balance", "Dmc-cartpole-swingup"]
# Same fit options in every sweep here, so that runs of one (env, seed) are comparable bit for bit. A checkpoint every
# 100 env steps tells the interruption test that the run is training.
SWEEP = ["sweep", "--config", str(CONFIGS / "dmc.yaml"), "--config", str(CONFIGS / "smoke.yaml"), "--seeds", "0-1",
         "--status_every", "5", "--progress_bar.refresh_rate", "0", "--checkpoint.every_n_env_steps", "100"]  # fmt: skip


# Ray runs its workers, and so the fits they start, at niceness 15 (its `worker_niceness` setting): next to the
# other xdist workers' tests the sweep's fits got a fraction of a core and this file ended the suite minutes after
# the rest. Here they run at the tests' own priority.
SWEEP_ENV = cli_env(RAY_worker_niceness="0")


def sweep_command(root: Path, envs: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "mrq_lightning", *SWEEP, "--envs", ",".join(envs), "--root", str(root), *extra]


def run_dir(root: Path, env: str, seed: int) -> Path:
    return root / "dmc" / env / f"seed_{seed}"


def final_checkpoint(root: Path, env: str, seed: int) -> Path:
    return run_dir(root, env, seed) / "logs" / "mrq" / "version_0" / "checkpoints" / "env_step=0000600.ckpt"


def status(root: Path, env: str, seed: int) -> dict:
    path = run_dir(root, env, seed) / "sweep_run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """2 envs x 2 seeds, two runs at a time (one CPU each)."""
    root = tmp_path_factory.mktemp("sweep") / "root"
    proc = subprocess.run(sweep_command(root, ENVS), cwd=REPO, env=SWEEP_ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc


def test_sweep_runs_every_env_and_seed_as_a_fit_run(full_sweep):
    root, proc = full_sweep
    assert "4 runs to do, 2 at a time" in proc.stdout
    assert "4 runs: 4 finished, 0 running, 0 pending, 0 failed" in proc.stdout  # the live summary's last line
    for env in ENVS:
        for seed in (0, 1):
            state = status(root, env, seed)
            assert (state["state"], state["attempts"], state["exit_codes"], state["seed"]) == ("finished", 1, [0], seed)
            assert final_checkpoint(root, env, seed).is_file()
            scalars = tensorboard_scalars(run_dir(root, env, seed) / "logs" / "mrq" / "version_0")
            assert [step for step, _ in scalars["eval/return"]] == [0, 300, 600]
    # Different seeds are different runs.
    a, _, _ = load_checkpoint(final_checkpoint(root, ENVS[0], 0))
    b, _, _ = load_checkpoint(final_checkpoint(root, ENVS[0], 1))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert any(not (a["state_dict"][k] == b["state_dict"][k]).all() for k in a["state_dict"])


def test_rerun_skips_finished_runs(full_sweep):
    root, _ = full_sweep
    def files() -> dict:  # everything but the driver's lock file
        return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name != ".sweep.lock"}

    before = files()
    proc = subprocess.run(sweep_command(root, ENVS), cwd=REPO, env=SWEEP_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 of 4 runs already finished, skipped" in proc.stdout
    assert files() == before  # nothing touched


def test_report_writes_figures_and_tables(full_sweep, tmp_path):
    root, _ = full_sweep
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "mrq_lightning", "report", "--root", str(root), "--out", str(out)],
                          cwd=REPO, env=SWEEP_ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for png in ("aggregate.png", "curves/Dmc-cartpole-balance.png", "curves/Dmc-cartpole-swingup.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    report = (out / "report.md").read_text()
    assert "4 runs on 2 envs" in report and "CC BY-NC 4.0" in report
    # Step 0 is the last step shared with the official evaluations (every 5k); step 600 is the runs' last one.
    assert "| dmc | 0 | 2 | 2 | mean |" in report
    assert "| Dmc-cartpole-swingup | 0 | 2 |" in report and "| Dmc-cartpole-swingup | 600 | 2 |" in report
    assert "| 866 |" in report and "| 999 |" in report  # the paper's appendix values for the two tasks


def test_sigterm_to_the_driver_saves_and_a_rerun_resumes_bit_identically(full_sweep, tmp_path):
    """One env, seed 1: SIGTERM once it is training; the re-run resumes it from the checkpoint it saved when stopped
    and it ends equal to the uninterrupted sweep's run. (Skipping finished runs: the test below.)"""
    reference, _ = full_sweep
    root, env = tmp_path / "root", ENVS[0]
    command = sweep_command(root, [env], "--seeds", "1")
    driver = subprocess.Popen(command, cwd=REPO, env=SWEEP_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoints = run_dir(root, env, 1) / "logs" / "mrq" / "version_0" / "checkpoints"
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("env_step=*.ckpt")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert driver.poll() is None, driver.stdout.read()[-3000:]
    os.kill(driver.pid, signal.SIGTERM)
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 128 + signal.SIGTERM, output[-3000:]
    stopped = status(root, env, 1)
    assert stopped["state"] == "interrupted" and stopped["exit_codes"] == [143], output[-3000:]
    saved = sorted(checkpoints.glob("env_step=*.ckpt"))
    stopped_at = int(saved[-1].stem.split("=")[1])
    assert 100 <= stopped_at < 600, saved  # saved at the step it had reached, not at the budget

    proc = subprocess.run(command, cwd=REPO, env=SWEEP_ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "sweep: 1 run to do" in proc.stdout, proc.stdout[-2000:]
    log = (run_dir(root, env, 1) / "fit.log").read_text()
    assert f"env step {stopped_at}" in log and "Restored all states from the checkpoint" in log
    assert status(root, env, 1)["exit_codes"] == [143, 0]
    ours, _, ours_buffer = load_checkpoint(final_checkpoint(root, env, 1))
    ref, _, ref_buffer = load_checkpoint(final_checkpoint(reference, env, 1))
    assert_same(ours["state_dict"], ref["state_dict"], "state_dict")
    assert_same(ours["optimizer_states"], ref["optimizer_states"], "optimizer_states")
    assert_same(ours["mrq"], ref["mrq"], "mrq")
    assert_same(ours_buffer, ref_buffer, "buffer")


def test_a_killed_run_is_reported_and_resumed_by_a_rerun(full_sweep, tmp_path):
    """kill -9 of one run's fit with --max_retries 0: that run is reported failed, the other finishes, the driver
    exits 1; re-running the sweep resumes the killed run from its last checkpoint, bit-identically."""
    reference, _ = full_sweep
    root, env = tmp_path / "root", ENVS[1]
    command = sweep_command(root, [env], "--max_retries", "0")
    driver = subprocess.Popen(command, cwd=REPO, env=SWEEP_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = run_dir(root, env, 0)
    checkpoints = victim / "logs" / "mrq" / "version_0" / "checkpoints"
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("env_step=*.ckpt")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    fit = subprocess.run(["pgrep", "-f", f"default_root_dir {victim} "], capture_output=True, text=True).stdout.split()
    assert len(fit) == 1, fit
    os.kill(int(fit[0]), signal.SIGKILL)
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 1, output[-3000:]
    assert f"{env}/seed_0 FAILED after 1 attempt (exited with -9)" in output
    assert status(root, env, 0)["state"] == "failed" and status(root, env, 1)["state"] == "finished"

    proc = subprocess.run(command, cwd=REPO, env=SWEEP_ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f"1 of 2 runs already finished, skipped: {env}/seed_1" in proc.stdout
    assert "Restored all states from the checkpoint" in (victim / "fit.log").read_text()
    assert status(root, env, 0)["exit_codes"] == [-9, 0]
    ours, _, ours_buffer = load_checkpoint(final_checkpoint(root, env, 0))
    ref, _, ref_buffer = load_checkpoint(final_checkpoint(reference, env, 0))
    assert_same(ours["state_dict"], ref["state_dict"], "state_dict")
    assert_same(ours["optimizer_states"], ref["optimizer_states"], "optimizer_states")
    assert_same(ours_buffer, ref_buffer, "buffer")
