"""Aggregate statistics as the paper reports them (algorithm §14), with rliable's stratified bootstrap.

Scores are a (runs x tasks) matrix of normalised returns (seeds as runs). Mean and median are rliable's (over the
per-task seed means). The IQM is the 25%-trimmed mean of the per-task seed means, not rliable's run-level IQM: that
is the convention which reproduces the paper's published IQMs from the official results files (Atari 57 games at
2.5M steps: 0.903 vs the paper's 0.90; the run-level IQM gives 0.882). Confidence intervals: 95% percentile
intervals of a bootstrap that resamples seeds within each task (rliable's ``StratifiedBootstrap``).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import scipy.stats
from rliable import library, metrics

METRICS = ("mean", "median", "iqm")


class Estimate(NamedTuple):
    point: float
    low: float
    high: float

    def format(self, digits: int) -> str:
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _interval_estimates(score_dict: dict, func, reps: int, seed: int):
    """rliable's ``get_interval_estimates`` (stratified bootstrap, 95% percentile intervals), made reproducible:
    rliable 1.2 draws its resampling indices from numpy's global generator (``np.random.choice``) whatever
    ``random_state`` it is given, so the global generator is seeded here and put back afterwards."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # arch deprecates the RandomState rliable hands it
            return library.get_interval_estimates(score_dict, func, reps=reps, random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(saved)


def task_trimmed_mean(scores: np.ndarray) -> float:
    """IQM as the paper computes it: the 25%-trimmed mean of the per-task seed means."""
    return float(scipy.stats.trim_mean(np.mean(scores, axis=0), proportiontocut=0.25))


AGGREGATES = {"mean": metrics.aggregate_mean, "median": metrics.aggregate_median, "iqm": lambda s: task_trimmed_mean(s)}


def aggregate(scores: np.ndarray, *, reps: int = 2000, seed: int = 0, metrics: tuple[str, ...] = METRICS) -> dict[str, Estimate]:
    """``metrics`` (mean, median, IQM) of a (runs x tasks) score matrix with 95% stratified-bootstrap intervals
    (``reps`` resamples, reproducible from ``seed``). With one run per task the interval collapses to the point."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty (runs x tasks) matrix, got shape {scores.shape}")

    def func(x: np.ndarray) -> np.ndarray:
        return np.array([AGGREGATES[name](x) for name in metrics])

    if scores.shape[0] == 1:
        return {name: Estimate(float(p), float(p), float(p)) for name, p in zip(metrics, func(scores))}
    points, intervals = _interval_estimates({"scores": scores}, func, reps, seed)
    low, high = intervals["scores"]
    return {
        name: Estimate(float(p), float(lo), float(hi))
        for name, p, lo, hi in zip(metrics, points["scores"], low, high)
    }


def mean_interval(returns: np.ndarray, *, reps: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed mean and its 95% bootstrap interval at every evaluation of one environment: ``returns`` is
    (seeds x evaluations); returns (mean, low, high), each (evaluations,). One seed: low = high = mean."""
    returns = np.asarray(returns, dtype=np.float64)
    mean = returns.mean(axis=0)
    if returns.shape[0] == 1:
        return mean, mean, mean
    _, intervals = _interval_estimates({"runs": returns[:, None, :]}, lambda x: np.mean(x, axis=0)[0], reps, seed)
    low, high = intervals["runs"]
    return mean, low, high
