"""The training loop on the CPU with LTRAY_SYNC_DEBUG=error: between its once-per-interval
reads it asks nothing of the device that would make a GPU's host wait (HostReads), for the
losses and input paths whose step does most, and a read put into a loss is caught and named."""

import pytest
from train_support import make_job

import ltray.losses.feature_norm as feature_norm
from ltray.errors import LtrayError
from ltray.train import trainer as trainer_module
from ltray.train.launcher import run_job

DR = {
    "name": "dr", "margin": 0.2, "scale": 16.0, "learn_scale": True, "prior_tau": 1.0,
    "margin_warmup_epochs": 1, "uniformity": {"kind": "mhe_s2", "weight": 0.1},
    "norm": {"kind": "ring", "weight": 0.01},
}  # fmt: skip


@pytest.mark.parametrize(
    "sections",
    [
        {"loss": DR, "data": {"on_device": True}},  # the held set: gathered and augmented here
        {"loss": {"name": "ldam_drw", "drw_epoch": 1}},  # streamed, collated in this process
        {"loss": {"name": "weight_balancing"}},  # MaxNorm after each step
    ],
    ids=["dr-held", "ldam_drw", "weight_balancing"],
)
def test_the_training_loop_reads_nothing_back_between_its_logging_reads(
    tiny_data, tmp_path, monkeypatch, sections
):
    monkeypatch.setenv(trainer_module.SYNC_DEBUG_ENV, "error")
    job = make_job(
        tiny_data, tmp_path, schedule={"epochs": 2, "max_steps_per_epoch": 5},
        tracking={"uri": "none"}, **sections,
    )  # fmt: skip
    assert run_job(job, local=True).metrics["test/acc"] >= 0.0


def test_a_read_in_the_loss_stops_the_checked_loop_and_names_its_line(
    tiny_data, tmp_path, monkeypatch
):
    def reading_ring_loss(norms, radius):
        return (norms - radius).square().mean() * (1.0 if norms.max().item() > 0 else 0.0)

    monkeypatch.setattr(feature_norm, "ring_loss", reading_ring_loss)
    monkeypatch.setenv(trainer_module.SYNC_DEBUG_ENV, "error")
    job = make_job(
        tiny_data, tmp_path, schedule={"epochs": 1, "max_steps_per_epoch": 5},
        tracking={"uri": "none"}, loss=DR,
    )  # fmt: skip
    with pytest.raises(
        LtrayError, match=r"_local_scalar_dense .*test_loop_host_reads.py:\d+ \(reading_ring_loss\)"
    ):
        run_job(job, local=True)
