import math

import pytest

from ltray.config import OptimConfig, ScheduleConfig
from ltray.train.schedule import lr_at, scaled_lr


def test_linear_scaling_rule():
    optim = OptimConfig(lr=0.1, batch_size=128, base_batch_size=128)
    assert scaled_lr(optim, 1) == pytest.approx(0.1)
    assert scaled_lr(optim, 4) == pytest.approx(0.4)
    assert scaled_lr(optim.model_copy(update={"lr_scaling": "sqrt"}), 4) == pytest.approx(0.2)
    assert scaled_lr(optim.model_copy(update={"lr_scaling": "none"}), 4) == pytest.approx(0.1)


def test_warmup_then_multistep():
    s = ScheduleConfig(epochs=200, warmup_epochs=5, milestones=[160, 180], gamma=0.1)
    assert lr_at(0.5, 0.1, s) == pytest.approx(0.01)
    assert lr_at(5.0, 0.1, s) == pytest.approx(0.1)
    assert lr_at(159.9, 0.1, s) == pytest.approx(0.1)
    assert lr_at(160.0, 0.1, s) == pytest.approx(0.01)
    assert lr_at(185.0, 0.1, s) == pytest.approx(0.001)


def test_cosine_reaches_zero():
    s = ScheduleConfig(epochs=10, warmup_epochs=0, kind="cosine")
    assert lr_at(0.0, 1.0, s) == pytest.approx(1.0)
    assert lr_at(5.0, 1.0, s) == pytest.approx(0.5)
    assert lr_at(10.0, 1.0, s) == pytest.approx(0.0, abs=1e-12)
    assert not math.isnan(lr_at(12.0, 1.0, s))
