"""SyncCheck turns the host-synchronisation check on from the warm-up step, off around the
loop's own reads, and off at the end: torch's own on CUDA (its switch recorded, a CUDA device
faked), HostReads elsewhere, which finds on the CPU what would make a GPU's host wait."""

import warnings

import pytest
import torch

from ltray.errors import LtrayError
from ltray.train.device import SyncCheck
from ltray.train.host_reads import HostReads


def test_the_check_starts_after_the_warmup_pauses_for_reads_and_ends(monkeypatch):
    modes = [0]
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: modes[-1])
    with SyncCheck(torch.device("cuda", 0), "warn", warmup=2) as check:
        for step in range(4):
            check.at(step)
            if step == 1:
                assert modes == [0]  # the first two steps are not checked
            if step == 3:
                with check.paused():
                    assert modes[-1] == 0
                assert modes[-1] == "warn"
    assert modes == [0, "warn", 0, "warn", 0]


def test_without_a_mode_it_never_touches_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: 1 / 0)
    for device in ("cuda", "cpu"):
        with SyncCheck(torch.device(device, 0), None) as check:
            check.at(2)
            with check.paused():
                torch.ones(2).sum().item()


def test_on_the_cpu_it_reports_each_kind_of_host_read_with_its_line():
    x = torch.arange(6.0)
    reads = [
        ("_local_scalar_dense", lambda: x.sum().item()),
        ("_local_scalar_dense", lambda: bool(x[0] > 1)),
        ("equal", lambda: torch.equal(x, x)),
        ("nonzero", lambda: x.nonzero()),
        ("masked_select", lambda: x.masked_select(x > 2)),
        ("index", lambda: x[x > 2]),
        ("_unique2", lambda: torch.unique(x)),
        ("repeat_interleave", lambda: torch.repeat_interleave(x.long())),
        ("lift_fresh", lambda: x.new_tensor(0.5)),
    ]
    for name, read in reads:
        with pytest.raises(LtrayError, match=rf"aten::{name}\b.* at .*test_sync_check.py:\d+"):
            with HostReads("error"):
                read()
    rows = torch.tensor([0, 2])
    with HostReads("error"):  # what stays on the device passes
        y = torch.where(x > 2, x, 0.0).cumsum(0) + torch.full((), 1.0)
        y.index_fill_(0, rows, 0.0)
    assert y.sum().item() > 0  # and the check has ended


def test_warn_mode_reports_a_line_once(monkeypatch):
    check = SyncCheck(torch.device("cpu"), "warn", warmup=1)
    with warnings.catch_warnings(record=True) as caught, check:
        warnings.simplefilter("always")
        for step in range(4):
            check.at(step)
            torch.ones(1).sum().item()  # the same line every step
            with check.paused():
                torch.ones(1).sum().item()  # a read the loop makes on purpose
    reads = [w for w in caught if "host read" in str(w.message)]
    assert len(reads) == 1 and "_local_scalar_dense" in str(reads[0].message)
