"""The command line for a newcomer: MR.Q's short help, one-line errors (with a did-you-mean) for every bad input
before any work, no directory left behind by a refused start, `default_root_dir` honoured, a full disk reported
with the last good checkpoint. Each case runs the real CLI entry point in this process."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from conftest import SMOKE, run_cli

# Imported at collection: Lightning binds its log handler to the stderr of the moment it is first imported, which
# must not be one test's captured (then closed) stream.
from mrq_lightning.training.cli import main

FIT = ["fit", *SMOKE]


def _refused(args: list[str], cwd: Path, monkeypatch, capsys, in_process: bool = True) -> str:
    """Run the CLI; it must exit 2 with a one-line error (no traceback) and leave ``cwd`` as it was. Cases that get
    as far as the trainer run in a subprocess (Lightning's log handlers outlive pytest's captured streams)."""
    monkeypatch.chdir(cwd)
    before = sorted(p.name for p in cwd.iterdir())
    if in_process:
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err
    else:
        proc = run_cli(args, cwd)
        assert proc.returncode == 2, proc.stderr[-3000:]
        err = proc.stderr
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err  # one line, the last thing printed
    assert "Traceback" not in err
    assert sorted(p.name for p in cwd.iterdir()) == before  # no logs/, no empty version_<k>
    return errors[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (FIT + ["--model.init_args.batch_szie", "3"],
         "unknown option --model.batch_szie; did you mean --model.batch_size?"),
        (FIT + ["--data.total_step", "3"], "unknown option --data.total_step; did you mean --data.total_steps?"),
        (FIT + ["--trainer.max_epoch", "3"], "unknown option --trainer.max_epoch; did you mean --trainer.max_epochs?"),
        (FIT + ["--data.total_steps", "abc"], "--data.total_steps: expected int, got 'abc'"),
        (FIT + ["--optimizer", "Adam"], "unknown option --optimizer"),
        (["validate", *SMOKE], "unknown subcommand 'validate': choose from 'fit', 'test'"),
        (["predict", *SMOKE], "unknown subcommand 'predict'"),
        (FIT + ["--seed_everything", "-3"], "--seed_everything -3 is out of range"),
        (FIT + ["--model.batch_size", "0"], "MR.Q hyperparameter batch_size=0 is invalid: it must be an integer >= 1"),
        (FIT + ["--model.encoder_lr", "0"], "encoder_lr=0.0 is invalid: it must be a finite number > 0"),
        (FIT + ["--model.encoder_horizon", "0"], "encoder_horizon=0 is invalid"),
        (FIT + ["--data.eval_every", "0"], "data.total_steps, data.eval_every and data.buffer_capacity must be >= 1"),
        (FIT + ["--data.buffer_device", "gpu0"], "data.buffer_device='gpu0' is not a device"),
        (FIT + ["--checkpoint.keep_last", "0"], "checkpoint.keep_last=0 must be an integer >= 1, or -1 to keep all"),
        (FIT + ["--checkpoint.every_n_minutes", "-1"], "checkpoint.every_n_minutes=-1.0 must be a number >= 0"),
        (FIT + ["--trainer.devices", "abc"], "--trainer options refused by Lightning"),
        (FIT + ["--trainer.max_epochs", "3"], "Fix: set the budget with --data.total_steps"),
        (FIT + ["--trainer.max_steps", "3"], "Fix: set the budget with --data.total_steps"),
        (FIT + ["--trainer.min_epochs", "1"], "Fix: set the budget with --data.total_steps"),
        (["test", *SMOKE], "test evaluates a trained checkpoint: pass --ckpt_path PATH.ckpt, or --ckpt_path last"),
        (FIT + ["--ckpt_path", "missing.ckpt"], "checkpoint missing.ckpt does not exist"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v[-2:]),
)  # fmt: skip
def test_bad_input_gets_one_line_before_any_work(args, message, tmp_path, monkeypatch, capsys):
    assert message in _refused(args, tmp_path, monkeypatch, capsys)


def test_unwritable_directories_are_refused_at_start(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for option in ("--trainer.default_root_dir", "--checkpoint.dirpath", "--trainer.logger.init_args.save_dir"):
        line = _refused([*FIT, option, str(blocker / "sub")], tmp_path, monkeypatch, capsys)
        assert f"{option} {blocker / 'sub'} is not a writable directory" in line and "Fix:" in line


def test_misspelled_yaml_key_gets_a_did_you_mean(tmp_path, monkeypatch, capsys):
    (tmp_path / "typo.yaml").write_text("checkpoint:\n  keep_lst: 2\n")
    line = _refused([*FIT, "--config", str(tmp_path / "typo.yaml")], tmp_path, monkeypatch, capsys)
    assert "unknown option --checkpoint.keep_lst; did you mean --checkpoint.keep_last?" in line


@pytest.mark.parametrize("value", ["egl", "osmesa", "glfw", "disable", "off", ""])
def test_mujoco_gl_values_mujoco_and_dm_control_accept(value, monkeypatch):
    from mrq_lightning.rendering import check_mujoco_gl

    monkeypatch.setenv("MUJOCO_GL", value)
    assert check_mujoco_gl() == value


def test_invalid_mujoco_gl_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUJOCO_GL", "nonsense")
    line = _refused([*FIT, "--help"], tmp_path, monkeypatch, capsys)
    assert "MUJOCO_GL='nonsense' is not a MuJoCo rendering backend. Fix: MUJOCO_GL=egl" in line


@pytest.mark.envs
def test_a_start_refused_after_the_logger_made_its_directory_leaves_none(tmp_path, monkeypatch, capsys):
    """A precision Lightning accepts but MR.Q refuses in setup, after the logger created logs/mrq/version_0: the
    refused start removes the directories it made."""
    line = _refused([*FIT, "--trainer.precision", "64-true"], tmp_path, monkeypatch, capsys, in_process=False)
    assert "--trainer.precision 64-true is not supported by MR.Q here" in line


def test_short_help_leads_with_mr_q_options(capsys):
    main(["fit", "--help"])
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert len(lines) < 100
    for option in ("--model.batch_size", "--data.env", "--data.total_steps", "--checkpoint.every_n_minutes",
                   "--ckpt_path", "--trainer.precision"):  # fmt: skip
        assert any(line.lstrip().startswith(option) for line in lines), option
    assert "(default 256)" in text and "--help-all" in text and "--optimizer" not in text


def test_help_all_is_the_full_listing(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help-all"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--trainer.max_epochs" in text and "--optimizer" not in text and "--lr_scheduler" not in text


@pytest.mark.envs
def test_default_root_dir_is_honoured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main([*FIT, "--data.total_steps", "5", "--data.eval_episodes", "0", "--trainer.default_root_dir", "out"])
    assert (tmp_path / "out" / "logs" / "mrq" / "version_0" / "checkpoints" / "env_step=0000005.ckpt").is_file()
    assert not (tmp_path / "logs").exists()


@pytest.mark.envs
def test_a_failed_first_save_keeps_the_run_directory(tmp_path, monkeypatch, capsys):
    """Once training has started, a later error never removes what the run wrote (its TensorBoard events)."""
    from mrq_lightning.training import checkpoint_io

    def full_disk(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "atomic_torch_save", full_disk)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([*FIT, "--data.total_steps", "20", "--data.eval_episodes", "0"])
    assert exc.value.code == 2
    assert "The last complete checkpoint is none" in capsys.readouterr().err
    run_dir = tmp_path / "logs" / "mrq" / "version_0"
    assert list(run_dir.glob("events.out.tfevents.*")) and not list(run_dir.glob("checkpoints/*.replay"))


@pytest.mark.envs
def test_a_full_disk_names_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """The second save fails with ENOSPC: exit 2, one line naming the last complete checkpoint; the failed save's
    partial sidecar is removed and last.ckpt still points at the good one."""
    from mrq_lightning.training import checkpoint_io

    real_save = checkpoint_io.atomic_torch_save
    calls = []

    def full_disk_on_second_save(obj, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(checkpoint_io, "atomic_torch_save", full_disk_on_second_save)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([*FIT, "--data.total_steps", "40", "--data.eval_episodes", "0", "--checkpoint.every_n_env_steps", "20"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    directory = tmp_path / "logs" / "mrq" / "version_0" / "checkpoints"
    relative = directory.relative_to(tmp_path)
    assert f"could not write the checkpoint at env step 40 in {relative} (No space left on device)" in err
    assert f"The last complete checkpoint is {relative / 'last.ckpt'} (env step 20)" in err
    assert sorted(p.name for p in directory.iterdir()) == [
        "env_step=0000020.ckpt", "env_step=0000020.replay", "last.ckpt", "mrq_run.json"
    ]  # fmt: skip


def test_top_level_overview_and_unknown_subcommand():
    """``python -m mrq_lightning`` lists the four subcommands; a misspelled one gets a did-you-mean (exit 2)."""
    import subprocess
    import sys

    from conftest import REPO, cli_env

    overview = subprocess.run([sys.executable, "-m", "mrq_lightning", "--help"], cwd=REPO, env=cli_env(),
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert overview.returncode == 0 and all(f"  {name} " in overview.stdout for name in ("fit", "test", "sweep", "report"))
    typo = subprocess.run([sys.executable, "-m", "mrq_lightning", "sweeep"], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert typo.returncode == 2 and typo.stdout == ""
    assert typo.stderr == ("error: unknown subcommand 'sweeep' (did you mean 'sweep'?): choose from fit, test, sweep, "
                           "report (python -m mrq_lightning --help)\n")  # fmt: skip
