"""ltray.logs: while captured, libraries' logs and warnings go to the log file and ltray's
warnings to the console; everything is put back afterwards."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from ltray import logs

OURS = str(Path(logs.__file__).resolve().parent / "losses" / "uniformity.py")
THEIRS = str(Path(logging.__file__).resolve())  # any file outside the ltray package


class ForwardsToStderr:
    """A stream that writes to whatever sys.stderr is when written to."""

    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _warn_from(filename: str, text: str, category: type[Warning] = UserWarning) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit(text, category, filename, 1)


def test_verbose_changes_nothing(capsys):
    root = logging.getLogger()
    handlers, show = list(root.handlers), warnings.showwarning
    with logs.capture(verbose=True) as folder:
        assert folder is None and logs.log_folder() is None
        assert logs.ray_init_options() == {}
        assert root.handlers == handlers and warnings.showwarning is show


def test_library_logs_and_warnings_go_to_the_file_ltrays_warnings_to_stderr(tmp_path, capsys):
    library = logging.getLogger("some_library")
    own = logging.StreamHandler(sys.stderr)  # as a library that prints (Ray) does
    library.addHandler(own)
    forwarding = logging.getLogger("forwarding_library")
    forwarder = logging.StreamHandler(ForwardsToStderr())  # as MLflow's does
    forwarding.addHandler(forwarder)
    try:
        with logs.capture(verbose=False, base=tmp_path) as folder:
            assert folder is not None and folder.parent == tmp_path
            assert logs.log_folder() == folder
            logging.getLogger("mlflow.store").info("Creating initial MLflow database tables")
            logging.getLogger("some_library").warning("library chatter")
            logging.getLogger("forwarding_library").warning("forwarded chatter")
            _warn_from(THEIRS, "a library's deprecation", DeprecationWarning)
            _warn_from(OURS, "uniformity: torch.compile failed, running eager")
        text = (folder / logs.LOG_FILE).read_text()
        assert library.handlers == [own] and library.propagate  # put back
        assert forwarding.handlers == [forwarder]
    finally:
        library.handlers.clear()
        forwarding.handlers.clear()
    console = capsys.readouterr()
    assert console.out == ""
    assert console.err == "warning: uniformity: torch.compile failed, running eager\n"
    assert "Creating initial MLflow database tables" in text
    assert "library chatter" in text and "forwarded chatter" in text
    assert "DeprecationWarning: a library's deprecation" in text
    assert "running eager" not in text


def test_everything_is_put_back(tmp_path, capsys):
    import ray._private.worker as ray_worker  # as the launcher has, before it asks for options

    printer = ray_worker.print_to_stdstream
    root = logging.getLogger()
    ray_logger = logging.getLogger("ray")
    before = (list(root.handlers), root.level, warnings.showwarning)
    ray_before = (list(ray_logger.handlers), ray_logger.propagate)
    with logs.capture(verbose=False, base=tmp_path):
        assert logs.ray_init_options() == {"log_to_driver": False}
        assert ray_logger.propagate  # the driver's Ray logger now writes to the log file
        # the raylets' messages Ray prints whatever log_to_driver says go to the file too
        ray_worker.print_to_stdstream({"lines": ["8 workers started"], "pid": "raylet"}, False)
        assert "8 workers started" not in capsys.readouterr().out
    assert (list(root.handlers), root.level, warnings.showwarning) == before
    assert (list(ray_logger.handlers), ray_logger.propagate) == ray_before
    assert logs.log_folder() is None and logs.ray_init_options() == {}
    assert ray_worker.print_to_stdstream is printer
    logging.getLogger("some_library").warning("after: not in the file")
    (folder,) = tmp_path.iterdir()
    assert "after" not in (folder / logs.LOG_FILE).read_text()


def test_ray_logs_are_linked_into_the_folder(tmp_path):
    ray_logs = tmp_path / "ray-session" / "logs"
    ray_logs.mkdir(parents=True)
    (ray_logs / "worker-1.out").write_text("Reporting training result 1\n")
    logs.link_ray_logs(ray_logs)  # not captured: nothing to link into
    with logs.capture(verbose=False, base=tmp_path / "ltray") as folder:
        logs.link_ray_logs(ray_logs)
        logs.link_ray_logs(ray_logs)  # a second ray.init in the same command: one link
    assert (folder / logs.RAY_LINK / "worker-1.out").read_text() == "Reporting training result 1\n"


def test_a_new_folder_per_command(tmp_path):
    with logs.capture(verbose=False, base=tmp_path) as first:
        pass
    with logs.capture(verbose=False, base=tmp_path) as second:
        pass
    assert first != second and {first, second} == set(tmp_path.iterdir())
