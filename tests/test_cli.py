"""The ``ltray`` command's edge: one ``error: ...`` line and exit status 1 on bad input."""

import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

from processes import python_json
from typer.testing import CliRunner

from ltray.cli import app


def test_train_with_a_config_typo_prints_one_error_line(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: t\ndata: {url: ./d}\n")
    result = CliRunner().invoke(app, ["train", str(job), "--set", "loss.margn=0.3"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {job}: loss.margn: unknown key (did you mean 'margin'?)"
    ]


def test_demo_with_a_missing_job_file_names_it(tmp_path):
    missing = tmp_path / "missing.yaml"
    result = CliRunner().invoke(app, ["demo", "--job", str(missing)])
    assert result.exit_code == 1
    assert (
        result.stderr.strip() == f"error: cannot read job file {missing}: No such file or directory"
    )


def test_the_packaged_demo_job_spans_many_medium_and_few():
    from ltray.cli.demo import load_demo_job
    from ltray.data import shot_groups
    from ltray.data.prepare import sources

    job = load_demo_job()
    assert job.name == "demo" and job.data.url == "./ltray-demo/synthetic-lt"
    per_class = Counter(item.label for item in sources.synthetic().splits["train"])
    counts = [per_class[c] for c in sorted(per_class)]
    groups = shot_groups(counts, job.data.many_threshold, job.data.few_threshold)
    assert Counter(groups) == {"many": 3, "medium": 4, "few": 3}


def test_train_refuses_a_head_the_loss_does_not_train_before_anything_starts(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: t\ndata: {url: ./d}\nloss: {name: dr}\n")
    result = CliRunner().invoke(app, ["train", str(job), "--local", "--set", "model.head=linear"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: model.head is 'linear', but loss 'dr' trains a cosine head; "
        "drop model.head or set it to 'cosine'"
    )


def _leaf_keys(model, prefix=""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _leaf_keys(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def test_config_prints_every_key_with_its_value_default_and_description(tmp_path):
    from ltray.config import JobConfig

    job = tmp_path / "job.yaml"
    job.write_text("name: t\ndata: {url: 's3://AKIAUSER:pass-9f7@bucket/ds'}\n")
    args = ["config", str(job), "--set", "loss.margin=0.3"]
    args += ["--set", "data.storage_options={secret: hidden-7c1}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"# {job} with its overrides; auto values are resolved where it runs"
    stack, seen = [], {}
    for line in lines[1:]:  # rebuild dotted keys from the indentation
        depth = (len(line) - len(line.lstrip())) // 2
        key, _, rest = line.strip().partition(":")
        stack[depth:] = [key]
        seen[".".join(stack)] = rest
    for key, field in _leaf_keys(JobConfig):
        assert key in seen, key
        assert field.description and field.description in seen[key], key
    assert seen["loss.margin"].startswith(" 0.3  #") and "default: 0.2" in seen["loss.margin"]
    assert seen["data.storage_options"].startswith(" ***  #")
    assert "hidden-7c1" not in result.stdout and "pass-9f7" not in result.stdout
    assert seen["data.url"].startswith(" s3://***@bucket/ds")


def test_version_and_help_name_only_what_exists():
    from importlib.metadata import version

    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).stdout == f"ltray {version('ltray')}\n"
    listed = runner.invoke(app, ["--help"]).stdout
    commands = {line.split()[1] for line in listed.splitlines() if line.startswith("│ ")}
    present = ("prepare", "train", "tune", "eval", "analyze", "report", "config", "demo")
    for command in (*present, "submit", "jobs", "stop", "logs"):
        assert command in commands


def test_the_demo_sweep_is_skipped_with_a_line_on_a_set_without_val(tmp_path, capsys):
    """ltray demo --job on a data set without a val split: the sweep, which selects on val,
    says it is skipped (training ran before it)."""
    from train_support import run_cli

    from ltray.cli.demo import demo_job_sweep, load_demo_job, run_demo_sweep

    data = tmp_path / "no-val"
    run_cli("prepare", "synthetic", str(data), "--classes", "3", "--n-max", "8", "--imbalance", "2")
    job = load_demo_job().model_copy(deep=True)
    job.data.url = str(data)
    run_demo_sweep(demo_job_sweep({"name": "d", "data": {"url": str(data)}}), job)
    assert "has none: skipped" in capsys.readouterr().out


def test_a_capped_run_says_its_numbers_are_a_smoke_tests():
    from ltray.cli.train import smoke_caps
    from ltray.config import load_job

    job_file = Path(__file__).parents[1] / "jobs" / "cifar10_lt.yaml"
    assert smoke_caps(load_job(job_file)) is None
    capped = load_job(job_file, ["schedule.max_eval_batches=2"])
    assert smoke_caps(capped) == (
        "  (capped by schedule.max_eval_batches=2: a smoke test's numbers, not the split's)"
    )
    both = load_job(job_file, ["schedule.max_eval_batches=2", "schedule.max_steps_per_epoch=3"])
    assert "schedule.max_steps_per_epoch=3, schedule.max_eval_batches=2" in smoke_caps(both)


def test_commands_that_train_nothing_do_not_import_torch(tmp_path):
    """``ltray --help``, ``config``, ``jobs``, ``stop``, ``logs`` and ``submit`` need neither
    torch nor torchvision (6 of a slow machine's 8 s per call): they import them nowhere."""
    with socket.socket() as sock:  # a port nothing listens on: the job API is unreachable
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    demo_job = tmp_path / "demo.yaml"  # inside the folder submit packs, as submit wants
    demo_job.write_bytes((Path(__file__).parents[1] / "jobs" / "demo.yaml").read_bytes())
    demo_job = str(demo_job)
    where = ["--set", f"data.url={tmp_path}/d", "--set", f"storage.url={tmp_path}/runs"]
    calls = [
        ["--help"],
        ["config", demo_job],
        ["jobs", "--address", closed],
        ["stop", "raysubmit_x", "--address", closed],
        ["logs", "raysubmit_x", "--address", closed],
        ["submit", demo_job, "--address", closed, *where, "--set", f"tracking.uri={closed}"],
    ]
    script = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from ltray.cli import app\n"
        "results = [CliRunner().invoke(app, call) for call in json.loads(sys.argv[1])]\n"
        "said = [[r.exit_code, 'cannot reach the Ray dashboard' in r.output] for r in results]\n"
        "print(json.dumps([said, sorted({'torch', 'torchvision'} & set(sys.modules))]))\n"
    )
    said, imported = python_json(script, json.dumps(calls), cwd=tmp_path)
    assert said == [[0, False], [0, False]] + [[1, True]] * 4
    assert imported == []


def test_the_processes_around_the_workers_do_not_import_torchvision():
    """A run's driver (``ltray train``'s, ``ltray tune``'s, each sweep trial's), and Ray's
    controller, which unpickles the run's callbacks, import these modules and the function Ray
    pickles for the workers by name, not the loop's: torchvision costs seconds of CPU in each
    process (it pulls in torch._dynamo), times every trial of a sweep."""
    script = (
        "import json, pickle, sys\n"
        "import ltray.cli.train, ltray.cli.tune, ltray.tune.sweep\n"
        "from ltray.train.launcher import train_loop\n"
        "from ltray.train.session import failure_notice\n"
        "from ltray.tune.driver import EpochReports, trial_driver\n"
        "pickle.loads(pickle.dumps((train_loop, trial_driver, EpochReports, failure_notice)))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision')))\n"
    )
    assert python_json(script) == []


FINALIZER_CTRL_C = """
import signal, sys, time
import typer
from ltray.cli.console import exit_on_error

# a command typed at a terminal: Ctrl-C raises KeyboardInterrupt. A shell that starts the
# suite in the background leaves SIGINT ignored, and this interpreter would inherit that
signal.signal(signal.SIGINT, signal.default_int_handler)

class LandsInAFinalizer:
    def __del__(self):
        raise KeyboardInterrupt  # what the signal handler raises, in the finalizer

hook = sys.unraisablehook
try:
    with exit_on_error():
        LandsInAFinalizer()  # dropped at once: its __del__ runs here
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the command's work, until interrupted
            time.sleep(0.01)
    print("went on")
except typer.Exit as ended:
    print("exit", ended.exit_code, "hook restored" if sys.unraisablehook is hook else "hook kept")
"""


def test_a_ctrl_c_that_lands_in_a_finalizer_still_ends_the_command():
    """SIGINT raises KeyboardInterrupt wherever the main thread is; inside a ``__del__`` or a
    weakref callback (SQLAlchemy's, run by a garbage collection during a run's start-up)
    Python ignores it, and `ltray train` once trained to its end after a Ctrl-C. In a fresh
    interpreter, as a command runs, with SIGINT handled as at a terminal."""
    done = subprocess.run(
        [sys.executable, "-c", FINALIZER_CTRL_C], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "exit 130 hook restored", done.stdout + done.stderr
    assert done.stderr == "error: interrupted; run the same command again to resume\n"
