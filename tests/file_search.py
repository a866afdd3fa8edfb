"""Where a secret was written: the files under a folder that hold any spelling of it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def names_held(data: bytes, needles: Mapping[str, list[bytes]]) -> list[str]:
    """The names in ``needles`` (name -> spellings) that ``data`` holds in any spelling."""
    return [name for name, forms in needles.items() if any(form in data for form in forms)]


def files_holding(
    root: Path, needles: Mapping[str, list[bytes]], *, follow_links: bool = False
) -> dict[str, list[str]]:
    """Each file under ``root`` holding any spelling in ``needles`` (name -> spellings), with
    the names it holds. ``follow_links`` reads through symbolic links too: ltray's log folder
    reaches Ray's session logs through one."""
    found = {}
    for folder, _, names in os.walk(root, followlinks=follow_links):
        for name in names:
            path = Path(folder) / name
            if (path.is_symlink() and not follow_links) or not path.is_file():  # sockets
                continue
            try:
                data = path.read_bytes()
            except OSError:  # removed while we walked (Ray's logs rotate)
                continue
            held = names_held(data, needles)
            if held:
                found[str(path)] = held
    return found
