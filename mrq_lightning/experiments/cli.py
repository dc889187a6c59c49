"""``python -m mrq_lightning sweep ...`` and ``python -m mrq_lightning report ...`` (argument parsing and the checks
that run before any work starts; every refusal is one line on stderr and exit code 2)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mrq_lightning.errors import MRQUserError
from mrq_lightning.experiments.paper import BENCHMARKS, benchmark_envs, benchmark_of

SWEEP_USAGE = """python -m mrq_lightning sweep --config configs/dmc.yaml [--config OVERLAY.yaml] --envs ENVS --seeds SEEDS
       --root DIR [sweep options] [fit options, e.g. --data.total_steps 100000]"""
SWEEP_PROTOCOL = ["--data.eval_protocol", "sequential"]
# The sweep sets these per run; a fit option of the same name would be silently overridden.
RESERVED_FIT_OPTIONS = ("--data.env", "--data.init_args.env", "--seed_everything", "--trainer.default_root_dir",
                        "--ckpt_path")  # fmt: skip


def parse_seeds(text: str) -> list[int]:
    """``0-9``, ``0,3,5`` or a mix (``0-2,7``): distinct non-negative integers, in order."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            low, sep, high = part.strip().partition("-")
            values = range(int(low), int(high) + 1) if sep else [int(low)]
            if sep and int(high) < int(low):
                raise ValueError
            seeds += [s for s in values if s not in seeds]
    except ValueError:
        raise MRQUserError(f"--seeds {text!r}: expected seeds like 0-9, 0,3,5 or 0-2,7") from None
    if any(s < 0 or s > 2**32 - 1 for s in seeds):
        raise MRQUserError(f"--seeds {text!r}: seeds must lie in [0, 4294967295]")
    return seeds


def parse_envs(text: str) -> list[str]:
    """Comma-separated env names and/or the paper's benchmark lists (gym, dmc, dmc-visual, atari)."""
    envs: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        for env in benchmark_envs(item) if item in BENCHMARKS else [item]:
            if env not in envs:
                envs.append(env)
    if not envs:
        raise MRQUserError(f"--envs {text!r}: name at least one env or benchmark ({', '.join(BENCHMARKS)})")
    return envs


def check_env(name: str) -> None:
    """Build and close the environment once (the fit would fail on it with the same one-line error)."""
    from mrq_lightning.envs.registry import make_gymnasium_env

    env, _ = make_gymnasium_env(name, 0)
    env.close()


def check_fit_arguments(fit_args: list[str], env: str, seed: int) -> None:
    """Parse the fit options once, the way every run will (``fit ... --print_config``), so that a typo is reported
    before any run starts."""
    for option in fit_args:
        if option.split("=")[0] in RESERVED_FIT_OPTIONS:
            raise MRQUserError(f"{option.split('=')[0]} is set by the sweep for every run (use --envs, --seeds, --root)")
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "mrq_lightning", "fit", *fit_args, "--data.env", env,
                   "--seed_everything", str(seed), "--trainer.default_root_dir", scratch, "--print_config"]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise MRQUserError(f"fit options: {lines[-1].removeprefix('error: ') if lines else 'fit refused them'}")


def sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mrq_lightning sweep", usage=SWEEP_USAGE, allow_abbrev=False,
                                description="Run every (env, seed) as an ordinary fit run on Ray; re-running the "
                                "same command skips finished runs and resumes interrupted ones.")  # fmt: skip
    p.add_argument("--config", action="append", required=True, help="fit preset and overlays, in order")
    p.add_argument("--envs", required=True,
                   help="comma-separated env names and/or benchmark lists: " + ", ".join(BENCHMARKS))
    p.add_argument("--seeds", default="0", help="e.g. 0-9 (the paper's 10 seeds), 0,3,5 (default: 0)")
    p.add_argument("--root", required=True, type=Path, help="sweep directory: <root>/<benchmark>/<env>/seed_<k>/")
    p.add_argument("--ray_address", default=None, help="an existing Ray cluster (default: start Ray locally)")
    p.add_argument("--cpus_per_run", type=float, default=1.0, help="Ray CPUs per run = torch threads (default 1)")
    p.add_argument("--gpus_per_run", type=float, default=0.0, help="Ray GPUs per run; 0.25 puts 4 runs on a GPU")
    p.add_argument("--max_concurrent", type=int, default=None, help="at most this many runs at once")
    p.add_argument("--max_retries", type=int, default=2, help="retries of a failed run, each from its checkpoint")
    p.add_argument("--status_every", type=float, default=60.0, help="seconds between summary lines (default 60)")
    p.add_argument("--stop_grace", type=float, default=600.0, help="seconds stopped runs get to save (default 600)")
    return p


def sweep_main(argv: list[str]) -> int:
    from mrq_lightning.experiments.sweep import SweepOptions, run_sweep
    from mrq_lightning.experiments.sweep_runs import config_digest, plan_runs

    args, fit_overrides = sweep_parser().parse_known_args(argv)
    for name, value, ok in (("--cpus_per_run", args.cpus_per_run, args.cpus_per_run > 0),
                            ("--gpus_per_run", args.gpus_per_run, args.gpus_per_run >= 0),
                            ("--max_retries", args.max_retries, args.max_retries >= 0),
                            ("--max_concurrent", args.max_concurrent, args.max_concurrent is None or args.max_concurrent > 0),
                            ("--status_every", args.status_every, args.status_every > 0),
                            ("--stop_grace", args.stop_grace, args.stop_grace >= 0)):  # fmt: skip
        if not ok:
            raise MRQUserError(f"{name} {value}: must be "
                               + (">= 0" if name in ("--gpus_per_run", "--max_retries", "--stop_grace") else "> 0"))
    if args.gpus_per_run > 1 and args.gpus_per_run != int(args.gpus_per_run):
        raise MRQUserError(f"--gpus_per_run {args.gpus_per_run}: above 1 it must be a whole number of GPUs")
    unknown = [a for a in fit_overrides if a.startswith("--") and not a.startswith(("--model.", "--data.", "--trainer.",
               "--checkpoint.", "--progress_bar."))]  # fmt: skip
    if unknown:
        raise MRQUserError(f"unknown option {unknown[0]} (sweep options: python -m mrq_lightning sweep --help; fit "
                           "options start with --model., --data., --trainer., --checkpoint., --progress_bar.)")  # fmt: skip
    envs, seeds = parse_envs(args.envs), parse_seeds(args.seeds)
    configs = [Path(c) for c in args.config]
    missing = [str(c) for c in configs if not c.is_file()]
    if missing:
        raise MRQUserError(f"--config {missing[0]}: no such file")
    # Runs compared with the paper evaluate as the official code does (algorithm §14); fit options may override it.
    fit_args = [a for c in configs for a in ("--config", str(c.resolve()))] + SWEEP_PROTOCOL + fit_overrides
    for env in envs:
        check_env(env)
    _warn_about_presets(configs, envs)
    check_fit_arguments(fit_args, envs[0], seeds[0])
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not os.access(root, os.W_OK):
        raise MRQUserError(f"--root {root}: not writable")
    options = SweepOptions(args.ray_address, args.cpus_per_run, args.gpus_per_run, args.max_concurrent,
                           args.max_retries, args.status_every, args.stop_grace)  # fmt: skip
    return run_sweep(plan_runs(root, envs, seeds), fit_args, config_digest(fit_args), options, root)


def _warn_about_presets(configs: list[Path], envs: list[str]) -> None:
    """The paper's protocol differs per benchmark (budget, evaluation period): say so when an env's preset is not
    among the configs (a custom preset is fine; this is a reminder, not an error)."""
    names = {c.name for c in configs}
    for benchmark in sorted({benchmark_of(env) for env in envs}):
        preset = Path(BENCHMARKS[benchmark].preset).name
        if preset not in names:
            print(f"sweep: note: {benchmark} envs run with {', '.join(sorted(names))}, not the paper's {preset}",
                  file=sys.stderr)  # fmt: skip


def report_main(argv: list[str]) -> int:
    from mrq_lightning.experiments.report import write_report

    p = argparse.ArgumentParser(prog="python -m mrq_lightning report", allow_abbrev=False,
                                description="Learning curves, aggregates and a per-env table of a sweep against the "
                                "official MR.Q results.")  # fmt: skip
    p.add_argument("--root", required=True, type=Path, help="the sweep directory")
    p.add_argument("--out", required=True, type=Path, help="where the PNGs and report.md go")
    p.add_argument("--steps", default=None, help="env steps to tabulate, e.g. 20000,30000 (default: the paper's "
                   "checkpoints the runs reached, and their last evaluation)")  # fmt: skip
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    args = p.parse_args(argv)
    if args.reps < 1:
        raise MRQUserError(f"--reps {args.reps}: must be >= 1")
    if not args.root.is_dir():
        raise MRQUserError(f"--root {args.root}: no such directory (the --root of a sweep)")
    try:
        steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    except ValueError:
        raise MRQUserError(f"--steps {args.steps!r}: expected env steps like 20000,30000") from None
    written = write_report(args.root, args.out, steps=steps, reps=args.reps)
    print(f"report: {len(written)} files in {args.out}: " + ", ".join(p.name for p in written[:3]) + (", ..." if len(written) > 3 else ""))
    return 0


def main(command: str, argv: list[str]) -> None:
    try:
        sys.exit((sweep_main if command == "sweep" else report_main)(argv))
    except MRQUserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C before any run started (checks, Ray start-up)
        print(f"{command}: interrupted before any run started", file=sys.stderr)
        sys.exit(130)
    except ImportError as err:
        print(f'error: {command} needs {err.name or err}: pip install -e ".[experiments]"', file=sys.stderr)
        sys.exit(2)
