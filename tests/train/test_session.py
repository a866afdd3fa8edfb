"""The session's console side that runs without Ray: which warnings a worker forwards."""

from __future__ import annotations

import warnings
from pathlib import Path

import ltray
from ltray.train.session import forward_warnings

OURS = str(Path(ltray.__file__).resolve().parent / "losses" / "uniformity.py")
THEIRS = str(Path(warnings.__file__).resolve())


def test_a_worker_forwards_ltrays_warnings_once_and_keeps_all_in_its_log(recwarn):
    said: list[str] = []
    before = warnings.showwarning
    try:
        forward_warnings(said.append)
        forward_warnings(said.append)  # a second session in the same worker: still once
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn_explicit("uniformity: torch.compile failed", UserWarning, OURS, 1)
            warnings.warn_explicit("a library's deprecation", DeprecationWarning, THEIRS, 1)
    finally:
        warnings.showwarning = before
    assert said == ["warning: uniformity: torch.compile failed"]
    assert [str(w.message) for w in recwarn] == [
        "uniformity: torch.compile failed",
        "a library's deprecation",
    ]
