"""The console a user sees: ``ltray demo`` run as they run it, from an empty folder that is not
the checkout. Only ltray's lines reach stdout and stderr; Ray's and the libraries' chatter sits
in the log folder ltray names once; ``--verbose`` brings it back."""

from __future__ import annotations

import ast
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from processes import ltray_executable

from ltray.cli.demo import load_demo_job

REPO = Path(__file__).resolve().parents[1]
LINE_SHAPES = {
    "logs": r"\[ltray\] logs: (?P<folder>/\S+)",
    "preparing": r"\[ltray\] preparing a generated long-tailed data set at \S+",
    "classes": r"\[ltray\] \d+ classes \((?P<many>\d+) many, (?P<medium>\d+) medium, "
    r"(?P<few>\d+) few\), train counts \[[\d, ]+\]",
    "epoch": r"\[ltray\] epoch (?P<epoch>\d+): train/loss_total=[\d.]+ val/acc=[\d.]+ "
    r"val/acc_many=[\d.]+ val/acc_medium=[\d.]+ val/acc_few=[\d.]+ \(\d+ img/s\)",
    "result": r"\[ltray\] run (?P<run>demo-[0-9a-f]+): (?P<metrics>\{.*\})",
    "mlflow": r"\[ltray\] MLflow run [0-9a-f]{32} \(experiment demo\); look at it with:",
    "mlflow_ui": r"    mlflow ui --backend-store-uri sqlite:///ltray-demo/mlflow\.db",
    "sweep": r"\[ltray\] sweep demo-sweep-[0-9a-f]{8}: 6 trials \(random, scheduler asha\), "
    r"\d+ at a time",
    "trial": r"\[ltray\] trial \w+ (started: loss\.margin=.*|epoch [123]/3: val/acc_balanced "
    r"[\d.]+|finished|stopped early after [12]/3 epochs)",
    "leaderboard": r"\[ltray\] sweep demo-sweep-[0-9a-f]{8}:",
    "header": r"trial +loss\.margin +loss\.uniformity\.weight +loss\.norm\.weight +"
    r"val/acc_balanced +epochs +status",
    "row": r"\w+_\d{5} +[\d.e-]+ +[\d.e-]+ +[\d.e-]+ +[\d.]+ +[123]/3 +(finished|stopped early)",
    "best": r"\[ltray\] the best trial's job: ltray-demo/demo-sweep-best\.yaml "
    r"\(ltray train ltray-demo/demo-sweep-best\.yaml\)",
    "no_sweep": r"\[ltray\] the sweep runs on Ray: skipped with --local",
}
LOG_SUFFIXES = {".log", ".out", ".err"}
CHATTER = (
    "Reporting training result",
    "PlacementGroupCleaner",
    "Deprecat",
    "(RayTrainWorker",
    "(TrainController",
    "INFO",
    "WARNING",
)


@dataclass
class Console:
    returncode: int
    out: str
    err: str

    def shapes(self) -> list[tuple[str, re.Match]]:
        """(shape name, match) per stdout line; an AssertionError names a line of any other
        shape."""
        shaped = []
        for line in self.out.splitlines():
            found = [(n, re.fullmatch(p, line)) for n, p in LINE_SHAPES.items()]
            found = [(n, m) for n, m in found if m]
            assert found, f"not one of ltray's lines: {line!r}\n--- stdout:\n{self.out}"
            shaped.append(found[0])
        return shaped

    def one(self, name: str) -> re.Match:
        (match,) = [m for n, m in self.shapes() if n == name]
        return match


def run_demo(cwd: Path, *args: str) -> Console:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [ltray_executable(), "demo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    console = Console(done.returncode, done.stdout, done.stderr)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return console


def expected_lines(local: bool = False) -> list[str]:
    """The demo's stdout, line by line, as shape names (the sweep's trial lines, whose number
    depends on where ASHA stops trials, as one ``trial``)."""
    epochs = load_demo_job().schedule.epochs
    training = ["logs", "preparing", "classes", *["epoch"] * epochs, "result", "mlflow"]
    if local:
        return [*training, "mlflow_ui", "no_sweep"]
    sweep = ["sweep", "trial", "leaderboard", "header", *["row"] * 6, "best"]
    return [*training, "mlflow_ui", *sweep]


def shape_names(console: Console) -> list[str]:
    """The shapes of stdout's lines, a run of trial lines as one."""
    names: list[str] = []
    for name, _ in console.shapes():
        if not (name == "trial" and names and names[-1] == "trial"):
            names.append(name)
    return names


def files_under(folder: Path) -> list[Path]:
    """Every file in the log folder, through its link to Ray's session logs."""
    return [Path(d) / f for d, _, names in os.walk(folder, followlinks=True) for f in names]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Console]:
    """One ``ltray demo`` on Ray, from an empty folder outside the checkout."""
    folder = tmp_path_factory.mktemp("user")
    assert not folder.resolve().is_relative_to(REPO)
    return folder, run_demo(folder)


@pytest.mark.slow
def test_the_console_shows_only_ltrays_lines(demo):
    _, console = demo
    assert shape_names(console) == expected_lines()
    epochs = load_demo_job().schedule.epochs
    assert [int(m["epoch"]) for n, m in console.shapes() if n == "epoch"] == list(range(epochs))
    assert console.err == ""
    for chatter in CHATTER:
        assert chatter not in console.out + console.err


@pytest.mark.slow
def test_the_demo_from_an_empty_folder_reports_many_medium_and_few(demo):
    folder, console = demo
    assert (folder / "ltray-demo" / "synthetic-lt" / "manifest.json").is_file()
    classes = console.one("classes")
    assert all(int(classes[g]) > 0 for g in ("many", "medium", "few"))
    metrics = ast.literal_eval(console.one("result")["metrics"])
    for key in ("test/acc", "test/acc_many", "test/acc_medium", "test/acc_few"):
        assert 0.0 <= metrics[key] <= 100.0, key


@pytest.mark.slow
def test_the_log_folder_holds_rays_chatter(demo):
    _, console = demo
    folder = Path(console.one("logs")["folder"])
    assert folder.is_dir()
    assert "Started a local Ray instance" in (folder / "ltray.log").read_text()
    texts = [p.read_text(errors="replace") for p in files_under(folder) if p.suffix in LOG_SUFFIXES]
    assert any("Reporting training result" in t for t in texts)
    assert any("Setting up process group" in t for t in texts)  # a training worker's own line


@pytest.mark.slow
def test_verbose_brings_rays_lines_back(demo):
    folder, _ = demo
    console = run_demo(folder, "--verbose")  # the run is finished: Ray starts, reports, ends
    both = console.out + console.err
    assert "[ltray] logs:" not in both
    assert "(RayTrainWorker" in both and "Reporting training result" in both
    assert re.search(r"^\[ltray\] run demo-[0-9a-f]+ already finished", console.out, re.M)


@pytest.mark.slow
def test_a_local_demo_looks_the_same(tmp_path):
    console = run_demo(tmp_path, "--local")
    assert shape_names(console) == expected_lines(local=True)
    assert console.err == ""
    log = (Path(console.one("logs")["folder"]) / "ltray.log").read_text()
    assert "MLflow database tables" in log  # MLflow's chatter, kept from the console
