"""Checkpoint / resume through the real CLI: exact continuation, TensorBoard continuity, crash safety
(SIGKILL at a random time and in the middle of a checkpoint write) and clear errors for unusable checkpoints.

Runs use configs/dmc.yaml + configs/smoke.yaml on Dmc-cartpole-balance (tiny networks, 100 random steps, encoder
burst every 25 RL updates), one thread per process.
"""

from __future__ import annotations

import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SMOKE, assert_same, cli_env, load_checkpoint, run_cli, run_ok, scalar_steps

ENV = cli_env(threads=1)
BASE = ["fit", *SMOKE]
CKPT_DIR = Path("logs") / "mrq" / "version_0" / "checkpoints"

pytestmark = pytest.mark.slow

_cli, _scalars = run_cli, scalar_steps


_load_checkpoint, _assert_equal = load_checkpoint, assert_same


# ----------------------------------------------------------------------------------------------------------------
# 400 env steps, checkpoint, resume to 800  ==  800 env steps in one run
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("resumed")
    first = run_ok([*BASE, "--data.total_steps", "400"], cwd)
    second = run_ok([*BASE, "--data.total_steps", "800", "--ckpt_path", "last"], cwd)
    return cwd, first, second


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("uninterrupted")
    # No checkpoint before the end: the comparison also shows that saving one (at 400) leaves training untouched.
    run_ok([*BASE, "--data.total_steps", "800", "--checkpoint.every_n_env_steps", "0"], cwd)
    return cwd


def test_resumed_run_logs_from_the_saved_env_step(resumed):
    cwd, _, second = resumed
    assert "resumes at env step 400 (300 RL updates)" in second.stderr + second.stdout
    # Same run directory (no second version), two event files: one per invocation.
    (run_dir,) = glob.glob(str(cwd / "logs" / "mrq" / "version_*"))
    first_file, second_file = sorted(glob.glob(f"{run_dir}/events.out.tfevents.*"), key=os.path.getmtime)
    before, after = _scalars(first_file), _scalars(second_file)
    assert before["eval/return"] == [0, 300, 400] and before["loss/value"] == list(range(150, 401, 50))
    # The resumed invocation starts logging after env step 400: no second warm-up, no step-0 evaluation.
    assert after["eval/return"] == [600, 800]
    assert after["loss/value"] == list(range(450, 801, 50))
    assert min(min(steps) for steps in after.values()) > 400
    # RL updates and encoder bursts (every 25 RL updates) on both sides of the checkpoint.
    assert before["loss/encoder"] and after["loss/encoder"] and min(after["loss/encoder"]) > 400
    # TensorBoard's merged view of the run is one continuous x-axis in env steps.
    merged = _scalars(run_dir)
    assert merged["eval/return"] == [0, 300, 400, 600, 800]
    assert merged["loss/value"] == list(range(150, 801, 50))


def _assert_same_at_800(straight_cwd: Path, resumed_cwd: Path) -> tuple[dict, dict, dict]:
    """The env step 800 checkpoints of a straight and a resumed run hold the same networks, optimizer states, replay
    buffer and rank state. The resumed run's first invocation also evaluated at its own budget end; evaluation uses
    its own env and a forked RNG, so only the eval env's state may differ. Returns the straight run's checkpoint."""
    straight = _load_checkpoint(straight_cwd / CKPT_DIR / "env_step=0000800.ckpt")
    again = _load_checkpoint(resumed_cwd / CKPT_DIR / "env_step=0000800.ckpt")
    assert again[0]["mrq"]["rl_updates"] == straight[0]["mrq"]["rl_updates"] == 700
    _assert_equal(straight[0]["state_dict"], again[0]["state_dict"], "state_dict")
    _assert_equal(straight[0]["optimizer_states"], again[0]["optimizer_states"], "optimizer_states")
    _assert_equal(straight[2], again[2], "replay buffer")
    skip = {"eval_env_states"}
    _assert_equal({k: v for k, v in straight[1].items() if k not in skip},
                  {k: v for k, v in again[1].items() if k not in skip}, "rank state")  # fmt: skip
    return straight


def test_resume_is_exact(resumed, uninterrupted):
    """Parameters, targets, reward scales, optimizer states, counters, replay buffer, simulator state, current
    observation and RNG states after 400 + 400 resumed steps equal those after 800 uninterrupted steps (which saved
    no checkpoint before 800: checkpointing does not perturb the run)."""
    resumed_cwd = resumed[0]
    straight = _assert_same_at_800(uninterrupted, resumed_cwd)
    assert straight[1]["env_state"] is not None  # DMC physics state is restorable, not a fresh episode
    # keep_last=1: one env-step checkpoint (and sidecar) left, and last.ckpt is the same file.
    names = sorted(p.name for p in (resumed_cwd / CKPT_DIR).iterdir())
    assert names == ["env_step=0000800.ckpt", "env_step=0000800.replay", "last.ckpt", "mrq_run.json"]
    assert os.path.samefile(resumed_cwd / CKPT_DIR / "last.ckpt", resumed_cwd / CKPT_DIR / "env_step=0000800.ckpt")


def test_resume_inside_the_random_phase_is_exact(tmp_path, uninterrupted):
    """Split at env step 50 of the 100 random steps: the collector must go on acting at random for 50 more steps
    (from the restored RNG), then learning starts at the same env step as in one run."""
    run_ok([*BASE, "--data.total_steps", "50"], tmp_path)
    run_ok([*BASE, "--data.total_steps", "800", "--ckpt_path", "last"], tmp_path)
    _assert_same_at_800(uninterrupted, tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# Crashes
# ----------------------------------------------------------------------------------------------------------------
def _assert_every_checkpoint_loads(directory: Path, *, killed_every: int | None = None) -> dict[str, int]:
    """Every ``*.ckpt`` loads with its sidecar, and ``last.ckpt`` is the newest checkpoint.

    ``killed_every``: the directory of a run killed at a random moment that saved every that many env steps. Then a
    kill after the new ``env_step=N.ckpt`` was renamed into place but before ``last.ckpt`` was replaced is also a
    crash-safe state: ``last.ckpt`` is the previous checkpoint (complete, with its sidecar) and N is complete too.
    """
    steps = {}
    for ckpt in sorted(directory.glob("*.ckpt")):
        steps[ckpt.name] = _load_checkpoint(ckpt)[0]["mrq"]["env_steps"]
    assert "last.ckpt" in steps, sorted(steps)
    newest = max(steps.values())
    if killed_every is None or steps["last.ckpt"] == newest:
        assert steps["last.ckpt"] == newest, steps
    else:
        assert steps["last.ckpt"] == newest - killed_every and len(steps) == 3, steps
    return steps


def test_sigkill_mid_training_resumes_from_the_last_checkpoint(tmp_path):
    # The kill moment is drawn from a seeded generator (MRQ_KILL_SEED, default 0) and printed: a failure names it.
    seed = int(os.environ.get("MRQ_KILL_SEED", "0"))
    delay = random.Random(seed).uniform(0.0, 1.0)
    print(f"SIGKILL {delay:.3f} s after the env step 175 checkpoint (MRQ_KILL_SEED={seed})")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mrq_lightning", *BASE, "--data.total_steps", "100000",
         "--checkpoint.every_n_env_steps", "25"],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    directory = tmp_path / CKPT_DIR
    deadline = time.monotonic() + 900  # a loaded machine: the warm-up and 3 checkpoints can take minutes
    try:
        # Past the warm-up and a few RL checkpoints, kill at a random moment (often inside a checkpoint write).
        while max((int(p.name[9:16]) for p in directory.glob("env_step=*.ckpt")), default=0) < 175:
            assert proc.poll() is None, "training exited early"
            assert time.monotonic() < deadline, "no checkpoint at env step 175 in time"
            time.sleep(0.05)
        time.sleep(delay)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    steps = _assert_every_checkpoint_loads(directory, killed_every=25)
    saved = steps["last.ckpt"]
    assert saved >= 175 and saved % 25 == 0
    resumed = run_ok([*BASE, "--data.total_steps", str(saved + 50), "--ckpt_path", "last"], tmp_path)
    assert f"resumes at env step {saved} " in resumed.stderr + resumed.stdout
    final = _assert_every_checkpoint_loads(directory)
    assert final["last.ckpt"] == saved + 50
    # The resumed invocation's own log file starts after the checkpoint; events the killed run wrote past it are
    # purged, so TensorBoard shows each env step once.
    newest = max(glob.glob(str(tmp_path / "logs/mrq/version_0/events.*")), key=os.path.getmtime)
    assert min(min(s) for s in _scalars(newest).values()) > saved
    logged = _scalars(str(tmp_path / "logs/mrq/version_0"))["train/rl_updates"]
    assert logged == sorted(set(logged)) and logged[-1] == (saved + 50) // 50 * 50


KILL_AT_RENAME = """
import os, signal, sys
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith("env_step=0000150.ckpt"):   # the .ckpt is fully written to its temporary file
        import gc
        from torch.utils.tensorboard import SummaryWriter
        for writer in [o for o in gc.get_objects() if isinstance(o, SummaryWriter)]:
            writer.flush()   # worst case for TensorBoard: the events logged at 150 reached the disk
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
sys.argv = ["mrq_lightning", *sys.argv[1:]]
from mrq_lightning.training.cli import main
main()
"""


def test_sigkill_during_a_checkpoint_write_leaves_no_corrupt_checkpoint(tmp_path):
    (tmp_path / "kill.py").write_text(KILL_AT_RENAME)
    proc = subprocess.run(
        [sys.executable, "kill.py", *BASE, "--data.total_steps", "300", "--checkpoint.every_n_env_steps", "50"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    directory = tmp_path / CKPT_DIR
    # The 150 sidecar was complete and its .ckpt sat in a hidden temporary file: neither counts as a checkpoint.
    assert not (directory / "env_step=0000150.ckpt").exists()
    assert (directory / "env_step=0000150.replay" / "rank0" / "state.pt").exists()
    assert any(p.name.startswith(".env_step=0000150.ckpt.") for p in directory.iterdir())
    assert _assert_every_checkpoint_loads(directory) == {"env_step=0000100.ckpt": 100, "last.ckpt": 100}

    resumed = run_ok([*BASE, "--data.total_steps", "200", "--ckpt_path", "last"], tmp_path)
    assert "resumes at env step 100 " in resumed.stderr + resumed.stdout
    assert _assert_every_checkpoint_loads(directory) == {"env_step=0000200.ckpt": 200, "last.ckpt": 200}
    # The killed run's events at 150 are on disk; the resumed run logged 150 again and TensorBoard shows it once.
    killed_file, resumed_file = sorted(glob.glob(str(tmp_path / "logs/mrq/version_0/events.*")), key=os.path.getmtime)
    assert _scalars(killed_file)["train/rl_updates"] == [50, 100, 150]
    assert _scalars(resumed_file)["train/rl_updates"] == [150, 200]
    assert _scalars(str(tmp_path / "logs/mrq/version_0"))["train/rl_updates"] == [50, 100, 150, 200]
    # The next save removed the orphaned sidecar and the temporary file.
    assert sorted(p.name for p in directory.iterdir()) == [
        "env_step=0000200.ckpt", "env_step=0000200.replay", "last.ckpt", "mrq_run.json"
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Stop signals: checkpoint at the current env step, exit 128 + signal, resume exactly
# ----------------------------------------------------------------------------------------------------------------
def _signal_mid_run(cwd: Path, signum: int, env: dict | None = None) -> tuple[int, str, int]:
    """Start an 800-step run, send ``signum`` twice (the second lands during or after the save) once its env-step
    200 checkpoint exists; return (exit code, output, env step of the checkpoint the signal wrote)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mrq_lightning", *BASE, "--data.total_steps", "800", "--checkpoint.every_n_env_steps",
         "200"], cwd=cwd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    first = cwd / CKPT_DIR / "env_step=0000200.ckpt"
    deadline = time.monotonic() + 600
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signum)
    time.sleep(0.02)
    proc.send_signal(signum)
    out = proc.communicate(timeout=600)[0]
    saved = [int(m.group(1)) for p in (cwd / CKPT_DIR).iterdir() if (m := re.match(r"env_step=(\d+)\.ckpt$", p.name))]
    assert len(saved) == 1, saved
    return proc.returncode, out, saved[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_saves_the_current_env_step_and_resumes_exactly(signum, tmp_path, uninterrupted):
    code, out, saved = _signal_mid_run(tmp_path, signum)
    assert code == 128 + signum, out[-3000:]  # 143 / 130: a scheduler sees an interrupted run, not a success
    assert 200 < saved < 800, out[-3000:]
    assert f"received {signum.name}" in out
    assert f"MR.Q stopped by {signum.name} at env step {saved}: checkpoint" in out
    assert "Traceback" not in out
    resumed = run_ok([*BASE, "--data.total_steps", "800", "--ckpt_path", "last"], tmp_path)
    assert f"resumes at env step {saved} " in resumed.stderr + resumed.stdout
    _assert_same_at_800(uninterrupted, tmp_path)


def test_slurm_requeue_signal_saves_requeues_and_the_requeued_job_resumes(tmp_path, uninterrupted):
    """Lightning's SLURM auto-requeue protocol with a fake ``scontrol`` on PATH: SIGUSR1 saves and asks for a
    requeue; the requeued job (same job id, same command, no --ckpt_path) resumes that run exactly."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "mrq", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip
    env = cli_env(threads=1, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **slurm)
    code, out, saved = _signal_mid_run(tmp_path, signal.SIGUSR1, env)
    assert code == 128 + signal.SIGUSR1, out[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "SLURM requeue requested" in out
    requeued = subprocess.run(
        [sys.executable, "-m", "mrq_lightning", *BASE, "--data.total_steps", "800"],
        cwd=tmp_path, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log_text = requeued.stdout + requeued.stderr
    assert requeued.returncode == 0, log_text[-3000:]
    assert "SLURM job 4242 was requeued: resuming run" in log_text
    assert f"resumes at env step {saved} " in log_text
    _assert_same_at_800(uninterrupted, tmp_path)
    # The requeued job continued in its run directory (no second version).
    assert sorted(p.name for p in (tmp_path / "logs" / "mrq").iterdir()) == ["version_0"]


def test_wall_clock_cadence_saves_between_step_cadences(tmp_path):
    """--checkpoint.every_n_minutes saves on time alone (every_n_env_steps 0); each save logs its size and time."""
    done = run_ok([*BASE, "--data.total_steps", "150", "--data.eval_episodes", "0", "--checkpoint.every_n_env_steps",
                   "0", "--checkpoint.every_n_minutes", "0.002", "--checkpoint.keep_last", "-1"], tmp_path)  # fmt: skip
    steps = sorted(int(p.name[9:16]) for p in (tmp_path / CKPT_DIR).glob("env_step=*.ckpt"))
    assert len(steps) >= 3 and steps[-1] == 150, steps  # timed saves in between, and the one at the end
    logged = re.findall(r"MR.Q checkpoint at env step (\d+): \S+ \(([\d.]+) (KB|MB) with the replay sidecar, ([\d.]+) s\)",
                        done.stdout + done.stderr)  # fmt: skip
    assert [int(step) for step, *_ in logged] == steps


# ----------------------------------------------------------------------------------------------------------------
# Unusable checkpoints: a CheckpointError that names the file and the fix, exit code 2, no traceback
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_checkpoint(resumed) -> Path:
    return resumed[0] / CKPT_DIR / "last.ckpt"


def _fit_in_process(args: list[str], cwd: Path, monkeypatch, capsys) -> str:
    """Run the CLI in this process (saves a few seconds of imports per case); return stderr of the exit-2 error."""
    from mrq_lightning.training.cli import main

    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_corrupt_checkpoint_gets_a_clear_error(tmp_path, saved_checkpoint):
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(saved_checkpoint.read_bytes()[:5000])
    proc = _cli([*BASE, "--data.total_steps", "800", "--ckpt_path", str(bad)], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"checkpoint {bad} is corrupt" in proc.stderr and "Fix:" in proc.stderr


def test_missing_checkpoint_gets_a_clear_error_before_any_log_directory(tmp_path, monkeypatch, capsys):
    err = _fit_in_process([*BASE, "--ckpt_path", "no/such.ckpt"], tmp_path, monkeypatch, capsys)
    assert "checkpoint no/such.ckpt does not exist. Fix: pass an existing .ckpt file" in err
    assert list(tmp_path.iterdir()) == []  # no empty version directory left to shift the next run's number


@pytest.mark.parametrize(
    "override, message",
    [
        (["--data.env", "Dmc-cartpole-swingup"], ("was trained on Dmc-cartpole-balance, this run is configured for "
                                                   "Dmc-cartpole-swingup. Fix: pass --data.env Dmc-cartpole-balance")),
        (["--data.buffer_capacity", "6000"], "data.buffer_capacity: checkpoint 5000, now 6000"),
    ],
    ids=["other-env", "other-data-config"],
)
def test_mismatched_checkpoint_gets_a_clear_error(override, message, tmp_path, saved_checkpoint, monkeypatch, capsys):
    err = _fit_in_process([*BASE, "--data.total_steps", "900", *override, "--ckpt_path", str(saved_checkpoint)],
                          tmp_path, monkeypatch, capsys)  # fmt: skip
    assert message in err and str(saved_checkpoint) in err and "Fix:" in err


@pytest.mark.parametrize(
    "override, difference",
    [(["--model.hidden_dim", "32"], "model.hidden_dim: 64 there, 32 here"),
     (["--trainer.precision", "bf16-mixed"], "precision: '32-true' there, 'bf16-mixed' here")],
    ids=["hidden_dim", "precision"],
)  # fmt: skip
def test_last_skips_runs_of_another_configuration(override, difference, tmp_path, resumed, monkeypatch, recwarn):
    """`--ckpt_path last` resumes only a run with the same configuration (a bf16 run is not continued in fp32, nor
    the reverse); the others are named with their differences, and a fresh run starts beside them."""
    from mrq_lightning.training.cli import main

    shutil.copytree(resumed[0] / "logs", tmp_path / "logs")
    before = (tmp_path / CKPT_DIR / "last.ckpt").read_bytes()
    monkeypatch.chdir(tmp_path)
    main([*BASE, *override, "--data.total_steps", "5", "--data.eval_episodes", "0", "--ckpt_path", "last"])
    warned = " ".join(str(w.message) for w in recwarn)
    assert f"skipped: version_0 ({difference}" in warned and "starting a fresh run" in warned
    assert sorted(p.name for p in (tmp_path / "logs" / "mrq").iterdir()) == ["version_0", "version_1"]
    assert (tmp_path / CKPT_DIR / "last.ckpt").read_bytes() == before


def test_checkpoint_without_its_sidecar_gets_a_clear_error(tmp_path, saved_checkpoint, monkeypatch, capsys):
    lonely = tmp_path / "moved" / "last.ckpt"
    lonely.parent.mkdir()
    shutil.copy(saved_checkpoint, lonely)
    err = _fit_in_process([*BASE, "--data.total_steps", "900", "--ckpt_path", str(lonely)], tmp_path, monkeypatch, capsys)
    assert re.search(r"replay sidecar .*env_step=0000800\.replay/rank0 is missing", err) and "Fix:" in err


def test_foreign_checkpoint_gets_a_clear_error(tmp_path, monkeypatch, capsys):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "epoch": 0}, foreign)
    err = _fit_in_process([*BASE, "--ckpt_path", str(foreign)], tmp_path, monkeypatch, capsys)
    assert f"checkpoint {foreign} was not written by mrq_lightning" in err
