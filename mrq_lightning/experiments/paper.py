"""The paper's benchmarks and the official MR.Q results (algorithm §2.3, §14): which environments each benchmark
holds, its budget and reporting checkpoints, how its scores are normalised, and the official 10-seed curves.

The data lies in ``mrq_lightning/paper_data/`` (its README states the source and the licence: the official results
are CC BY-NC 4.0 data of the MR.Q authors, shipped unchanged and kept apart from the MIT code).
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent.parent / "paper_data"


@dataclass(frozen=True)
class Benchmark:
    """One of the paper's four benchmark families."""

    name: str  # the sweep folder name: gym | dmc | dmc-visual | atari
    title: str
    results_file: str  # in DATA_DIR
    preset: str  # configs/<preset>
    budget: int  # agent steps (algorithm §2.3)
    checkpoints: tuple[int, ...]  # steps at which the paper's appendix tables report
    score: str  # what the aggregates are computed over (algorithm §14)

    def contains(self, env: str) -> bool:
        return benchmark_of(env) == self.name


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("gym", "Gym locomotion", "gym_results.txt", "configs/gym.yaml", 1_000_000,
                  (100_000, 300_000, 500_000, 1_000_000), "TD3-normalised score"),
        Benchmark("dmc", "DMC proprioceptive", "dmc_results.txt", "configs/dmc.yaml", 500_000,
                  (100_000, 250_000, 500_000), "raw return"),
        Benchmark("dmc-visual", "DMC visual", "dmc_results.txt", "configs/dmc_visual.yaml", 500_000,
                  (100_000, 250_000, 500_000), "raw return"),
        Benchmark("atari", "Atari", "atari_results.txt", "configs/atari.yaml", 2_500_000,
                  (100_000, 500_000, 1_000_000, 2_500_000), "human-normalised score"),
    )
}  # fmt: skip


def benchmark_of(env: str) -> str:
    """The benchmark family an environment name belongs to (``Dmc-visual-*`` before ``Dmc-*``)."""
    for prefix, name in (("Dmc-visual-", "dmc-visual"), ("Dmc-", "dmc"), ("Atari-", "atari"), ("Gym-", "gym")):
        if env.startswith(prefix):
            return name
    raise ValueError(f"{env!r} belongs to no benchmark (names start with Gym-, Dmc-, Dmc-visual- or Atari-)")


@dataclass(frozen=True)
class OfficialCurve:
    """The official per-seed evaluation returns of one environment: ``returns[i, s]`` at ``steps[i]``, seed ``s``."""

    env: str
    steps: np.ndarray  # (n_evals,) agent steps
    returns: np.ndarray  # (n_evals, n_seeds)

    def at(self, step: int) -> np.ndarray:
        """The seeds' returns at ``step`` (which must be one of the official evaluation steps)."""
        index = np.flatnonzero(self.steps == step)
        if index.size == 0:
            raise KeyError(f"{self.env}: the official results have no evaluation at step {step}")
        return self.returns[index[0]]

    def paper_table_value(self) -> int:
        """The paper's appendix-table entry: the seed mean at the final step, truncated (not rounded)."""
        return math.trunc(float(self.returns[-1].mean()))


def parse_results(text: str) -> dict[str, OfficialCurve]:
    """Parse an official results file: ``Env: <name>`` starts an environment, a ``Timestep`` header follows, then one
    tab-separated row per evaluation (step, then one return per seed)."""
    rows: dict[str, list[list[float]]] = {}
    env = None
    for line in text.splitlines():
        if line.startswith("Env: "):
            env = line[5:].strip()
            rows[env] = []
        elif env is not None and line[:1].isdigit():
            rows[env].append([float(v) for v in line.split()])
    return {
        name: OfficialCurve(name, np.array([r[0] for r in table], dtype=np.int64), np.array([r[1:] for r in table]))
        for name, table in rows.items()
    }


@functools.cache
def _results_file(file_name: str) -> dict[str, OfficialCurve]:
    return parse_results((DATA_DIR / file_name).read_text())


def official_curves(benchmark: str) -> dict[str, OfficialCurve]:
    """Every environment of ``benchmark`` in the official results, in the file's order."""
    spec = BENCHMARKS[benchmark]
    return {env: curve for env, curve in _results_file(spec.results_file).items() if benchmark_of(env) == benchmark}


def official_curve(env: str) -> OfficialCurve | None:
    """The official curve of ``env``, or ``None`` when the paper did not run it."""
    return official_curves(benchmark_of(env)).get(env)


def benchmark_envs(benchmark: str) -> list[str]:
    """The paper's environment list: 5 Gym, 28 DMC, 28 DMC-visual, 57 Atari."""
    return list(official_curves(benchmark))


@functools.cache
def _references() -> dict[str, tuple[float, float]]:
    with open(DATA_DIR / "normalization.csv", newline="") as f:
        return {row["env"]: (float(row["random"]), float(row["reference"])) for row in csv.DictReader(f)}


def normalize(env: str, returns: np.ndarray | float) -> np.ndarray:
    """The paper's score (algorithm §14): (x - random) / (reference - random) with the TD3 reference for Gym and the
    human reference for Atari; DMC scores are the raw return. Environments without references (an Atari game or Gym
    task outside the paper's lists) raise ``KeyError``."""
    returns = np.asarray(returns, dtype=np.float64)
    if benchmark_of(env) in ("dmc", "dmc-visual"):
        return returns
    random_score, reference = _references()[env]
    return (returns - random_score) / (reference - random_score)


def has_normalization(env: str) -> bool:
    return benchmark_of(env) in ("dmc", "dmc-visual") or env in _references()
