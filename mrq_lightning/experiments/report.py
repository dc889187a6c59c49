"""``python -m mrq_lightning report``: a sweep's curves and aggregates beside the official MR.Q results.

Writes into ``--out``:

* ``curves/<env>.png``: our seed mean and its 95% bootstrap interval, the official 10-seed mean and their min-max
  range, over env steps (up to our last evaluation);
* ``aggregate.png``: per benchmark, the aggregate mean over the sweep's envs (normalised as in the paper) with its 95%
  stratified-bootstrap interval, ours and the official seeds' on the same envs;
* ``report.md``: the aggregates (mean, median, IQM with intervals; ``statistics.py``) at the paper's checkpoints the
  sweep reached (or ``--steps``), and per env the score at those steps beside the official mean and range (inside /
  outside) and the paper's appendix-table value.

Aggregates compare like with like: the official numbers are recomputed on the same envs and steps as ours, so a
3-env sweep is not compared with a 28-env mean.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import numpy as np

from mrq_lightning.atomic_io import atomic_write_text
from mrq_lightning.errors import MRQUserError
from mrq_lightning.experiments import paper, statistics
from mrq_lightning.experiments.scalars import run_curve
from mrq_lightning.experiments.sweep_runs import STATUS_FILE

Curves = dict[str, dict[int, dict[int, float]]]  # env -> seed -> {env step: eval return}
ATTRIBUTION = ("Official results: per-seed evaluation returns of Fujimoto et al. (2025), github.com/facebookresearch/MRQ "
               "`results/`, CC BY-NC 4.0 (mrq_lightning/paper_data/README.md).")  # fmt: skip


def collect(root: Path) -> tuple[Curves, list[dict]]:
    """Every run's ``eval/return`` curve under a sweep directory (``<root>/<benchmark>/<env>/seed_<k>/``), and every
    run's status (its ``sweep_run.json``, with the last evaluated step; runs without any evaluation are listed there
    and left out of the curves)."""
    curves: Curves = {}
    runs = []
    for seed_dir in sorted(Path(root).glob("*/*/seed_*"), key=lambda d: (d.parent.name, _seed_of(d))):
        if _seed_of(seed_dir) < 0:
            continue
        curve = run_curve(seed_dir)
        try:
            status = json.loads((seed_dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            status = {}
        runs.append({"env": seed_dir.parent.name, "seed": _seed_of(seed_dir), "state": status.get("state", "unknown"),
                     "attempts": status.get("attempts"), "last_eval": max(curve) if curve else None,
                     "fit_args": status.get("fit_args")})  # fmt: skip
        if curve:
            curves.setdefault(seed_dir.parent.name, {})[_seed_of(seed_dir)] = curve
    return curves, runs


def _seed_of(seed_dir: Path) -> int:
    match = re.fullmatch(r"seed_(\d+)", seed_dir.name)
    return int(match.group(1)) if match else -1


def common_steps(seeds: dict[int, dict[int, float]]) -> list[int]:
    """Env steps at which every seed of an env has an evaluation."""
    return sorted(set.intersection(*(set(curve) for curve in seeds.values()))) if seeds else []


def by_benchmark(curves: Curves) -> dict[str, Curves]:
    """The curves of each benchmark family present (their protocols and budgets differ)."""
    groups: dict[str, Curves] = {}
    for env, seeds in curves.items():
        groups.setdefault(paper.benchmark_of(env), {})[env] = seeds
    return groups


def report_steps(curves: Curves, requested: list[int] | None) -> list[int]:
    """The steps to tabulate for one benchmark's envs: ``requested`` (those some run reached), else the paper's
    checkpoints that every run reached, the last step all runs share, and the last shared step at which the official
    results also have an evaluation (every 5k or 100k steps)."""
    reached = sorted(set().union(*(set(curve) for seeds in curves.values() for curve in seeds.values())))
    if requested:
        return [s for s in sorted(requested) if s in reached]
    shared = sorted(set.intersection(*(set(common_steps(seeds)) for seeds in curves.values())))
    if not shared:
        return []
    checkpoints = set(paper.BENCHMARKS[paper.benchmark_of(next(iter(curves)))].checkpoints)
    official = [c for c in (paper.official_curve(env) for env in curves) if c is not None]
    with_official = [s for s in shared if official and all(s in c.steps for c in official)]
    return sorted({s for s in shared if s in checkpoints} | {shared[-1]} | set(with_official[-1:]))


def env_rows(env: str, seeds: dict[int, dict[int, float]], steps: list[int]) -> list[dict]:
    """Per reporting step: our seed mean, the official mean, min and max at that step, whether our mean lies inside
    the official seeds' range and how many of our seeds do."""
    official = paper.official_curve(env)
    rows = []
    for step in steps:
        ours = [curve[step] for curve in seeds.values() if step in curve]
        if not ours:
            continue
        row = {"env": env, "step": step, "seeds": len(ours), "ours": float(np.mean(ours))}
        if official is not None:
            row["paper_table"] = official.paper_table_value()
        if official is not None and step in official.steps:
            values = official.at(step)
            low, high = float(values.min()), float(values.max())
            row.update(official_mean=float(values.mean()), official_min=low, official_max=high,
                       inside=low <= row["ours"] <= high, seeds_inside=sum(low <= r <= high for r in ours))  # fmt: skip
        rows.append(row)
    return rows


def _comparable(envs) -> list[str]:
    """The envs that the paper ran and can normalise: those an aggregate compares with the official seeds."""
    return [e for e in envs if paper.official_curve(e) is not None and paper.has_normalization(e)]


def aggregate_rows(curves: Curves, steps: list[int], reps: int, metrics: tuple[str, ...] = statistics.METRICS) -> list[dict]:
    """Per benchmark and step: ours and the official seeds' aggregates over the same envs (those with official
    results and normalisation constants, and an evaluation at that step for every one of our seeds). Every env
    contributes as many seeds as the env with the fewest (a score matrix is runs x tasks)."""
    rows = []
    for benchmark in paper.BENCHMARKS:
        envs = _comparable(e for e in curves if paper.benchmark_of(e) == benchmark)
        for step in steps:
            usable = [e for e in envs if step in common_steps(curves[e]) and step in paper.official_curve(e).steps]
            if not usable:
                continue
            n_seeds = min(len(curves[e]) for e in usable)
            ours = np.stack([paper.normalize(e, [curves[e][s][step] for s in sorted(curves[e])[:n_seeds]])
                             for e in usable], axis=1)  # fmt: skip
            official = np.stack([paper.normalize(e, paper.official_curve(e).at(step)) for e in usable], axis=1)
            rows.append({"benchmark": benchmark, "step": step, "envs": usable, "seeds": n_seeds,
                         "ours": statistics.aggregate(ours, reps=reps, metrics=metrics),
                         "official": statistics.aggregate(official, reps=reps, metrics=metrics)})  # fmt: skip
    return rows


CURVE_REPS = 500  # resamples per step for the aggregate curve (one interval per official evaluation step)


def _plot_env(env: str, seeds: dict[int, dict[int, float]], path: Path, reps: int) -> bool:
    """Our seed mean (and its 95% interval from 2 seeds on) against the official mean and range; False when the
    seeds share no evaluation step."""
    import matplotlib.pyplot as plt

    steps = common_steps(seeds)
    if not steps:
        return False
    returns = np.array([[seeds[s][t] for t in steps] for s in sorted(seeds)])
    mean, low, high = statistics.mean_interval(returns, reps=reps)
    fig, ax = plt.subplots(figsize=(6, 4))
    official = paper.official_curve(env)
    if official is not None:
        keep = official.steps <= max(steps)
        ax.fill_between(official.steps[keep], official.returns[keep].min(1), official.returns[keep].max(1),
                        color="tab:gray", alpha=0.25, label="official: 10-seed range")  # fmt: skip
        ax.plot(official.steps[keep], official.returns[keep].mean(1), color="tab:gray", label="official: mean")
    label = f"ours: mean of {len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
    ax.plot(steps, mean, color="tab:blue", marker="o" if len(steps) < 30 else None, label=label)
    if len(seeds) > 1:
        ax.fill_between(steps, low, high, color="tab:blue", alpha=0.25, label="ours: 95% CI")
    ax.set(title=env, xlabel="env steps (agent steps)", ylabel="evaluation return")
    _save(fig, [ax], path)
    return True


def _plot_aggregates(curves: Curves, path: Path, reps: int) -> bool:
    """Aggregate mean over steps per benchmark, ours vs official on the same envs; False if nothing to plot."""
    import matplotlib.pyplot as plt

    panels = []
    for benchmark, group in by_benchmark(curves).items():
        envs = _comparable(group)
        if envs:
            steps = sorted(set.intersection(*(set(common_steps(curves[e])) & set(paper.official_curve(e).steps.tolist())
                                               for e in envs)))  # fmt: skip
            if steps:
                panels.append((benchmark, envs, steps))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (benchmark, envs, steps) in zip(axes[0], panels):
        rows = aggregate_rows({e: curves[e] for e in envs}, steps, min(reps, CURVE_REPS), metrics=("mean",))
        for who, color in (("official", "tab:gray"), ("ours", "tab:blue")):
            point = [r[who]["mean"].point for r in rows]
            seeds = rows[0]["seeds"] if who == "ours" else 10
            ax.plot(steps, point, color=color, label=f"{who} ({seeds} seed{'s' if seeds > 1 else ''})")
            ax.fill_between(steps, [r[who]["mean"].low for r in rows], [r[who]["mean"].high for r in rows],
                            color=color, alpha=0.25)  # fmt: skip
        spec = paper.BENCHMARKS[benchmark]
        ax.set(title=f"{spec.title}: mean over {len(envs)} env{'s' if len(envs) > 1 else ''}", xlabel="env steps",
               ylabel=spec.score)  # fmt: skip
    _save(fig, list(axes[0]), path)
    return True


def _save(fig, axes: list, path: Path) -> None:
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _digits(benchmark: str) -> int:
    return 1 if benchmark in ("dmc", "dmc-visual") else 3


def _interval(estimate: statistics.Estimate, digits: int, seeds: int) -> str:
    return estimate.format(digits) if seeds > 1 else f"{estimate.point:.{digits}f} (1 seed: no interval)"


def markdown(root: Path, curves: Curves, runs: list[dict], aggregates: list[dict], env_table: list[dict],
             figures: list[Path], out: Path) -> str:  # fmt: skip
    n_runs = sum(len(seeds) for seeds in curves.values())
    lines = [f"# MR.Q sweep report: `{root}`", "",
             f"{n_runs} runs on {len(curves)} envs; generated {datetime.date.today().isoformat()} by "
             "`python -m mrq_lightning report`. Scores: evaluation return (mean of the evaluation episodes), "
             "aggregated as in the paper (Gym TD3-normalised, DMC raw, Atari human-normalised; IQM = 25%-trimmed "
             "mean of the per-env means, which equals the mean below 4 envs), 95% stratified-bootstrap intervals over "
             "seeds (rliable; with 2-3 seeds they are too narrow to trust); the official columns are recomputed on the "
             "same envs and steps.", "", ATTRIBUTION, ""]  # fmt: skip
    fit_args = next((r["fit_args"] for r in runs if r.get("fit_args")), None)
    if fit_args:
        lines += ["Fit options of the sweep: `" + " ".join(fit_args) + "`", ""]
    if aggregates:
        lines += ["## Aggregates", "", "| benchmark | env step | envs | seeds | metric | ours | official (10 seeds) |",
                  "|---|---:|---:|---:|---|---|---|"]  # fmt: skip
        for row in aggregates:
            d = _digits(row["benchmark"])
            for metric in statistics.METRICS:
                lines.append(f"| {row['benchmark']} | {row['step']} | {len(row['envs'])} | {row['seeds']} | {metric} | "
                             f"{_interval(row['ours'][metric], d, row['seeds'])} | {row['official'][metric].format(d)} |")  # fmt: skip
        lines.append("")
    lines += ["## Per environment", "",
              "*inside*: our seed mean lies within the official seeds' range (min to max of the 10 official seeds at "
              "that step); *seeds inside*: how many of our seeds do; *paper*: the paper's appendix-table value (final "
              "step, truncated mean).", "",
              "| env | env step | seeds | ours | official mean | official range | inside | seeds inside | paper (final) |",
              "|---|---:|---:|---:|---:|---|---|---:|---:|"]  # fmt: skip
    for row in env_table:
        if "official_mean" in row:
            lines.append(f"| {row['env']} | {row['step']} | {row['seeds']} | {row['ours']:.1f} | {row['official_mean']:.1f} | "
                         f"[{row['official_min']:.1f}, {row['official_max']:.1f}] | {'yes' if row['inside'] else '**no**'} | "
                         f"{row['seeds_inside']}/{row['seeds']} | {row['paper_table']} |")  # fmt: skip
        else:
            lines.append(f"| {row['env']} | {row['step']} | {row['seeds']} | {row['ours']:.1f} | n/a | n/a | n/a | n/a | "
                         f"{row.get('paper_table', 'n/a')} |")  # fmt: skip
    lines += ["", "## Runs", "", "| env | seed | state | attempts | last evaluation (env step) |", "|---|---:|---|---:|---:|"]
    lines += [f"| {r['env']} | {r['seed']} | {r['state']} | {r['attempts'] if r['attempts'] is not None else 'n/a'} | "
              f"{r['last_eval'] if r['last_eval'] is not None else 'none yet'} |" for r in runs]  # fmt: skip
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in figures]
    return "\n".join(lines) + "\n"


def write_report(root: Path, out: Path, *, steps: list[int] | None = None, reps: int = 2000) -> list[Path]:
    """Write the report of the sweep under ``root`` into ``out``; returns the files written. Steps are chosen per
    benchmark (:func:`report_steps`); ``out/curves/`` is rewritten (figures of envs no longer in the sweep go)."""
    import matplotlib

    matplotlib.use("Agg")
    curves, runs = collect(root)
    if not curves:
        raise MRQUserError(f"--root {root}: no run with eval/return scalars under <root>/<benchmark>/<env>/seed_<k>/")
    groups = by_benchmark(curves)
    chosen = {benchmark: report_steps(group, steps) for benchmark, group in groups.items()}
    if steps and not any(chosen.values()):
        reached = sorted(set().union(*(set(c) for seeds in curves.values() for c in seeds.values())))
        raise MRQUserError(f"--steps {','.join(map(str, steps))}: no run has an evaluation there (evaluated steps: "
                           f"{', '.join(map(str, reached[:8]))}{', ...' if len(reached) > 8 else ''})")  # fmt: skip
    (out / "curves").mkdir(parents=True, exist_ok=True)
    for stale in (out / "curves").glob("*.png"):
        stale.unlink()
    figures = [out / "curves" / f"{env}.png" for env in sorted(curves)]
    figures = [path for path, env in zip(figures, sorted(curves)) if _plot_env(env, curves[env], path, reps)]
    if _plot_aggregates(curves, out / "aggregate.png", reps):
        figures.insert(0, out / "aggregate.png")
    env_table, aggregates = [], []
    for benchmark, group in groups.items():
        env_table += [row for env, seeds in sorted(group.items()) for row in env_rows(env, seeds, chosen[benchmark])]
        aggregates += aggregate_rows(group, chosen[benchmark], reps)
    report = out / "report.md"
    atomic_write_text(report, markdown(root, curves, runs, aggregates, env_table, figures, out))
    return [report, *figures]
