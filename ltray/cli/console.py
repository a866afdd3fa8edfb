"""What the user sees: ltray's own lines, one ``error: ...`` line for anything they can get
wrong, and (unless ``--verbose``) the libraries' chatter kept in log files (:mod:`ltray.logs`)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from ltray import logs
from ltray.errors import LtrayError
from ltray.secrets import scrub

JobFile = Annotated[Path, typer.Argument(help="job YAML, e.g. jobs/cifar10_lt.yaml")]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a key: --set loss.margin=0.3 (repeatable)"),
]
TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="the MLflow store holding the runs (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db)",
    ),
]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="show Ray's and the libraries' logs here, not in log files"
    ),
]


@contextlib.contextmanager
def quiet_unless(verbose: bool) -> Iterator[Path | None]:
    """Keep library chatter in a new log folder (its path printed once) unless ``verbose``."""
    with logs.capture(verbose) as folder:
        if folder is not None:
            typer.echo(f"[ltray] logs: {folder}")
        yield folder


@contextlib.contextmanager
def exit_on_error(secrets_in: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Turn an LtrayError into ``error: <one line>`` on stderr and exit code 1.

    URL credentials, and the secrets in ``secrets_in`` (storage options, or a whole job dump),
    are scrubbed from the message; Ctrl-C exits 130, also when it lands in a finalizer
    (:class:`LostInterrupts`).
    """
    with LostInterrupts():
        try:
            yield
        except LtrayError as exc:
            line = " ".join(scrub(str(exc), secrets_in).split()) or "failed"
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted; run the same command again to resume", err=True)
            raise typer.Exit(130) from None


class LostInterrupts:
    """While a command runs, a Ctrl-C that Python drops is sent again.

    SIGINT raises KeyboardInterrupt wherever the main thread is. Inside a ``__del__`` or a
    weakref callback (SQLAlchemy's, under MLflow, run by any garbage collection) it cannot
    propagate: Python prints "Exception ignored in ..." and goes on, and ``ltray train`` once
    trained to its end after a Ctrl-C at start-up. As the unraisable-exception hook, this sends
    SIGINT to the main thread again a moment later, from a thread of its own, so that it lands
    outside the callback (and outside this hook, where it would be dropped too); other
    unraisable exceptions go to the hook it replaced.
    """

    DELAY_S = 0.05

    def __enter__(self) -> None:
        self._previous = sys.unraisablehook
        self._running = True
        sys.unraisablehook = self._hook

    def __exit__(self, *exc_info: object) -> None:
        self._running = False
        sys.unraisablehook = self._previous

    def _hook(self, unraisable: Any) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            main = threading.main_thread().ident
            threading.Thread(target=self._send_again, args=(main,), daemon=True).start()
        else:
            self._previous(unraisable)

    def _send_again(self, main_thread: int) -> None:
        time.sleep(self.DELAY_S)
        if self._running:
            signal.pthread_kill(main_thread, signal.SIGINT)
