"""The progress bar's rate and ETA follow recent progress, not the average since the start."""

from __future__ import annotations

import pytest

from mrq_lightning.training.callbacks import EnvStepProgressBar, RecentRate


def test_recent_rate_forgets_the_fast_random_phase():
    rate = RecentRate(window_s=60.0)
    for second in range(11):  # random phase: 1000 env steps/s for 10 s
        rate.add(float(second), 1000 * second)
    assert rate.per_second() == pytest.approx(1000.0)
    rate.reset()  # learning starts: 5 env steps/s from then on
    for second in range(11, 200):
        rate.add(float(second), 10_000 + 5 * (second - 10))
    assert rate.per_second() == pytest.approx(5.0)  # an average since the start would say ~55


def test_recent_rate_window_drops_old_marks():
    rate = RecentRate(window_s=10.0)
    for second in range(100):  # 1 step/s, then 3 steps/s
        rate.add(float(second), second if second < 50 else 50 + 3 * (second - 50))
    assert rate.per_second() == pytest.approx(3.0)


class _Module:
    def __init__(self, learning: bool) -> None:
        self.learning, self.env_steps, self.last_eval_return = learning, 1000, 136.25


@pytest.mark.parametrize("learning, eta", [(False, "after the random phase"), (True, "0:03:20")])
def test_eta_uses_the_recent_rate(learning, eta):
    bar = EnvStepProgressBar()
    bar._learning = learning
    bar._rate.add(0.0, 0)
    bar._rate.add(10.0, 50)  # 5 env steps/s
    postfix = bar._postfix(None, _Module(learning), n=1000, total=2000)
    assert postfix == {"env steps/s": "5.0", "ETA": eta, "eval_return": "136.2"}


def test_refresh_rate_must_be_a_count():
    from mrq_lightning.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="progress_bar.refresh_rate must be an integer >= 0"):
        EnvStepProgressBar(refresh_rate=-1)
