"""SyncCheck turns torch's host-synchronisation check on from the warm-up step, off around the
loop's own reads, and off at the end (torch's switch recorded, a CUDA device faked)."""

import torch

from ltray.train.device import SyncCheck


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


def test_without_a_mode_or_on_the_cpu_it_never_touches_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: 1 / 0)
    for check in (SyncCheck(torch.device("cuda", 0), None), SyncCheck(torch.device("cpu"), "warn")):
        with check:
            check.at(2)
            with check.paused():
                pass
