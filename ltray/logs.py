"""Where the chatter goes. The console is the user's: ltray's own lines, ltray's warnings and
errors. Library logs (Ray, MLflow, ...), library warnings and the output of Ray's workers and
actors go to log files in one folder, whose path the command prints once; ``--verbose`` leaves
all of it on the console, as does ltray used as a library (nothing captured).

The folder holds ``ltray.log`` (this process's logging and warnings) and, for a run on a Ray
this process started or joined, ``ray`` (a link to that Ray session's log folder: every worker's
and actor's stdout and stderr, Ray Train's own logs).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG_FILE = "ltray.log"
RAY_LINK = "ray"
_PACKAGE = Path(__file__).resolve().parent

_folder: Path | None = None
_adopted: dict[str, tuple[list[logging.Handler], bool]] = {}
_restore: list[Any] = []  # undoes what a captured console changed in libraries


def log_folder() -> Path | None:
    """The folder chatter goes to, or None while it shows on the console."""
    return _folder


def new_folder(base: Path | None = None) -> Path:
    """``{tmp}/ltray/logs/YYYY-mm-dd_HH-MM-SS_XXXXXXXX``: a new one per command, like Ray's
    sessions."""
    base = base or Path(tempfile.gettempdir()) / "ltray" / "logs"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y-%m-%d_%H-%M-%S_"), dir=base))


@contextlib.contextmanager
def capture(verbose: bool, base: Path | None = None) -> Iterator[Path | None]:
    """Send library logs and warnings to a new log folder (yielded) for the duration; with
    ``verbose``, change nothing and yield None. Everything is restored on exit."""
    global _folder
    if verbose:
        yield None
        return
    folder = new_folder(base)
    handler = logging.FileHandler(folder / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level, show = root.level, warnings.showwarning
    mlflow_env = os.environ.get("MLFLOW_CONFIGURE_LOGGING")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # MLflow, imported later (a --local run), then logs through the root logger, not to stderr
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
    _adopt_console_loggers()
    warnings.showwarning = _show_warning
    _folder = folder
    try:
        yield folder
    finally:
        _folder = None
        warnings.showwarning = show
        for name in list(_adopted):
            _release(name)
        while _restore:
            _restore.pop()()
        if mlflow_env is None:
            os.environ.pop("MLFLOW_CONFIGURE_LOGGING", None)
        else:
            os.environ["MLFLOW_CONFIGURE_LOGGING"] = mlflow_env
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def _writes_to_console(handler: logging.Handler) -> bool:
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    stream = handler.stream  # Ray's handler looks sys.stderr up when it writes
    if any(stream is s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)):
        return True
    # not a file or buffer but an object that forwards to sys.stderr when written to (MLflow's)
    return not isinstance(stream, io.IOBase)


def _adopt_console_loggers() -> None:
    """Libraries imported so far that gave their logger a console handler (Ray, MLflow do)."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and not name.startswith("ltray"):
            if any(_writes_to_console(h) for h in logger.handlers):
                adopt(name)


def adopt(name: str) -> None:
    """Route logger ``name`` (which wrote to the console itself) to the log file instead."""
    logger = logging.getLogger(name)
    if name not in _adopted:
        _adopted[name] = (list(logger.handlers), logger.propagate)
    for handler in list(logger.handlers):
        if _writes_to_console(handler):
            logger.removeHandler(handler)
    logger.propagate = True


def _release(name: str) -> None:
    handlers, propagate = _adopted.pop(name)
    logger = logging.getLogger(name)
    logger.handlers[:] = handlers
    logger.propagate = propagate


def ray_init_options() -> dict[str, Any]:
    """``ray.init`` keywords for the console in force: while captured, workers' and actors'
    output stays in Ray's log files (the launcher relays ltray's own lines) and the driver's
    Ray logger writes to the log file."""
    if _folder is None:
        return {}
    _log_ray_messages()  # imports Ray, which sets its logger up
    _adopt_console_loggers()
    adopt("ray")
    return {"log_to_driver": False}


def _log_ray_messages() -> None:
    """Ray prints the messages its raylets push to the driver (e.g. "N worker processes have
    been started") with ``print`` whatever ``log_to_driver`` says: while captured, they go to
    the log file. (``ray._private.worker.print_to_stdstream``, looked up by name when Ray
    prints; left alone if a Ray version has no such function.)"""
    import ray._private.worker as worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "ltray_replaces", None) is not None:
        return

    def to_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        source = data.get("pid", "ray")
        for line in data.get("lines", []):
            logging.getLogger("ray.messages").info("(%s) %s", source, line)

    to_log.ltray_replaces = printer  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_log
    _restore.append(lambda: setattr(worker, "print_to_stdstream", printer))


def link_ray_logs(ray_logs: str | Path) -> None:
    """Make Ray's session logs reachable from the log folder (``ray``), where there is one."""
    if _folder is None or not Path(ray_logs).is_dir():
        return
    link = _folder / RAY_LINK
    if not link.exists():
        link.symlink_to(Path(ray_logs), target_is_directory=True)


def from_ltray(filename: str) -> bool:
    """Whether a warning raised at ``filename`` is ltray's own (and so concerns the user)."""
    try:
        return Path(filename).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):
        return False


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """ltray's warnings concern the user: one ``warning: ...`` line on stderr. Libraries'
    warnings go to the log file."""
    if from_ltray(filename):
        sys.stderr.write(f"warning: {message}\n")
        sys.stderr.flush()
        return
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    logging.getLogger("py.warnings").warning(text)
