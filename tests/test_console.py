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
import yaml
from processes import COMMAND_TIMEOUT_S, ltray_executable

from ltray.cli.demo import demo_job_mapping, load_demo_job

REPO = Path(__file__).resolve().parents[1]
LINE_SHAPES = {
    "logs": r"\[ltray\] logs: (?P<folder>/\S+)",
    "preparing": r"\[ltray\] preparing a generated long-tailed data set at \S+",
    "classes": r"\[ltray\] \d+ classes \((?P<many>\d+) many, (?P<medium>\d+) medium, "
    r"(?P<few>\d+) few\), train counts \[[\d, ]+\]",
    "epoch": r"\[ltray\] epoch (?P<epoch>\d+): train/loss_total=[\d.]+ val/acc=[\d.]+ "
    r"val/acc_many=[\d.]+ val/acc_medium=[\d.]+ val/acc_few=[\d.]+ \(\d+ img/s\)",
    "training": r"\[ltray\] training (?P<job>demo|demo-ce) \((?P<loss>ce|dr), \d+ epochs\)",
    "result": r"\[ltray\] run (?P<run>demo(-ce)?-[0-9a-f]+): (?P<metrics>\{.*\})",
    "finished": r"\[ltray\] run (?P<run>demo(-ce)?-[0-9a-f]+) already finished; start fresh to "
    r"rerun it",
    "evaluated": r"\[ltray\] (?P<how>evaluated|evaluated before) run (?P<run>demo(-ce)?-[0-9a-f]+) "
    r"on test: top-1 (?P<acc>[\d.]+), top-5 [\d.]+, ECE [\d.]+",
    "table_title": r"\[ltray\] test top-1 \(%\):",
    "table_header": r"    method +seeds +All +Many +Medium +Few",
    "table_row": r"    (?P<method>ce|dr|dr, best trial \(val/acc_balanced\) of sweep "
    r"demo-sweep-[0-9a-f]{8}) +1 +(?P<all>[\d.]+) +[\d.]+ +[\d.]+ +[\d.]+",
    "sweep_note": r"\[ltray\] sweep demo-sweep-[0-9a-f]{8} left out: its best trial \w+ logged "
    r"no test metrics",
    "report": r"\[ltray\] report: ltray-demo/report/report\.html \(and report\.md\)",
    "mlflow": r"\[ltray\] MLflow experiment demo; look at it with:",
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
        timeout=COMMAND_TIMEOUT_S,
    )
    console = Console(done.returncode, done.stdout, done.stderr)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return console


def expected_lines(local: bool = False, epochs: int | None = None) -> list[str]:
    """The demo's stdout, line by line, as shape names (the sweep's trial lines, whose number
    depends on where ASHA stops trials, as one ``trial``; the report's row of the sweep's best
    trial, or the note that it ended before its test evaluation, as ``best_row``)."""
    epochs = epochs or load_demo_job().schedule.epochs
    training = ["preparing", "classes"]
    for _ in ("ce", "dr"):
        training += ["training", *["epoch"] * epochs, "result"]
    sweep = ["no_sweep"]
    if not local:
        sweep = ["sweep", "trial", "leaderboard", "header", *["row"] * 6, "best"]
    table = ["table_title", "table_header", "table_row", "table_row"]
    table += [] if local else ["best_row"]
    ending = ["report", "mlflow", "mlflow_ui"]
    return ["logs", *training, *sweep, "evaluated", "evaluated", *table, *ending]


def shape_names(console: Console) -> list[str]:
    """The shapes of stdout's lines, a run of trial lines as one."""
    names: list[str] = []
    for name, match in console.shapes():
        if name == "trial" and names and names[-1] == "trial":
            continue
        best_trial = name == "table_row" and "best trial" in match["method"]
        names.append("best_row" if best_trial or name == "sweep_note" else name)
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
    shown = [int(m["epoch"]) for n, m in console.shapes() if n == "epoch"]
    assert shown == [*range(epochs), *range(epochs)]  # the CE baseline's, then dr's
    assert console.err == ""
    for chatter in CHATTER:
        assert chatter not in console.out + console.err


@pytest.mark.slow
def test_the_demo_from_an_empty_folder_trains_evaluates_and_reports(demo):
    """The method and its CE baseline train, each evaluation gives its training's numbers, and
    the report's table (printed and in the page) holds them."""
    folder, console = demo
    assert (folder / "ltray-demo" / "synthetic-lt" / "manifest.json").is_file()
    classes = console.one("classes")
    assert all(int(classes[g]) > 0 for g in ("many", "medium", "few"))
    shapes = console.shapes()
    assert [m["loss"] for n, m in shapes if n == "training"] == ["ce", "dr"]
    trained = {}
    for name, match in shapes:
        if name == "result":
            metrics = ast.literal_eval(match["metrics"])
            for key in ("test/acc", "test/acc_many", "test/acc_medium", "test/acc_few"):
                assert 0.0 <= metrics[key] <= 100.0, key
            trained[match["run"]] = metrics["test/acc"]
    evaluated = {m["run"]: float(m["acc"]) for n, m in shapes if n == "evaluated"}
    assert evaluated == pytest.approx(trained, abs=0.006)  # both printed to 2 decimals
    rows = [m for n, m in shapes if n == "table_row" and "best trial" not in m["method"]]
    by_loss = {m["method"]: float(m["all"]) for m in rows}
    assert by_loss == pytest.approx(
        {("ce" if "-ce-" in run else "dr"): acc for run, acc in trained.items()}, abs=0.006
    )
    page = (folder / "ltray-demo" / "report" / "report.html").read_text()
    for run in trained:
        assert run in page
    assert page.count("<img ") >= 2 and "data:image/png;base64," in page


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
def test_a_second_demo_reuses_what_is_done_and_verbose_brings_rays_lines_back(demo):
    folder, first = demo
    report = folder / "ltray-demo" / "report" / "report.html"
    before = report.stat().st_mtime_ns
    console = run_demo(folder, "--verbose")
    both = console.out + console.err
    assert "[ltray] logs:" not in both
    assert "Started a local Ray instance" in both  # Ray's own lines, on the console
    # the runs are finished: answered from their final checkpoints, no training worker started
    assert "(RayTrainWorker" not in both and "Reporting training result" not in both
    runs = [m["run"] for n, m in first.shapes() if n == "result"]
    for run in runs:
        assert re.search(rf"^\[ltray\] run {run} already finished", console.out, re.M), run
        assert re.search(rf"^\[ltray\] evaluated before run {run} on test", console.out, re.M)
    assert "preparing" not in console.out
    assert not re.search(r"^\[ltray\] trial \w+ started", console.out, re.M)  # no trial reran
    assert report.stat().st_mtime_ns > before  # written again, from what MLflow holds


@pytest.mark.slow
def test_a_local_demo_looks_the_same(tmp_path):
    """``--local`` with the packaged job cut to 2 epochs of 3 steps (``--job``): the same lines,
    without the sweep."""
    raw = demo_job_mapping()
    raw["schedule"].update(epochs=2, max_steps_per_epoch=3)
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(raw))
    console = run_demo(tmp_path, "--local", "--job", "short.yaml")
    assert shape_names(console) == expected_lines(local=True, epochs=2)
    assert console.err == ""
    log = (Path(console.one("logs")["folder"]) / "ltray.log").read_text()
    assert "MLflow database tables" in log  # MLflow's chatter, kept from the console
