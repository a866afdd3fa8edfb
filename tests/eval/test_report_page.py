"""``ltray report`` over real runs trained here (CE with two seeds, and the seed paper's dr),
read as a person reads it: the page opened in headless Chromium (Debian's package), every
figure loaded, the table's numbers those MLflow holds, a screenshot kept."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image
from train_support import run_cli

COLUMNS = {"all": "test/acc", "many": "test/acc_many", "medium": "test/acc_medium"}
COLUMNS["few"] = "test/acc_few"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def train_like(trained, *sets: str) -> str:
    """The session's run with ``--set`` lines: its MLflow run id."""
    args = [a for s in sets for a in ("--set", s)]
    output = run_cli("train", str(trained.job_file), "--local", *args)
    return next(line.split()[2] for line in output.splitlines() if line.startswith("MLflow run"))


@pytest.fixture(scope="module")
def report(trained, trained_dr, tmp_path_factory):
    """CE seeds 0 and 1, dr seed 0; the report over them: its folder, stdout and the runs."""
    runs = {"ce": [trained.run_id, train_like(trained, "seed=1")], "dr": [trained_dr.run_id]}
    out = tmp_path_factory.mktemp("report")
    targets = [*runs["ce"], *runs["dr"]]
    stdout = run_cli(
        "report", *targets, "--tracking-uri", trained.tracking_uri, "--out", str(out),
        "--title", "CE vs dr",
    )  # fmt: skip
    client = mlflow.MlflowClient(trained.tracking_uri)
    metrics = {m: [client.get_run(r).data.metrics for r in ids] for m, ids in runs.items()}
    return out, stdout, metrics


def expected(metrics: dict, method: str, column: str) -> tuple[float, float]:
    values = [m[COLUMNS[column]] for m in metrics[method]]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else np.nan)


def test_the_terminal_table_shows_mean_and_std_over_seeds(report):
    _, stdout, metrics = report
    rows = {
        line.split()[0]: line.split() for line in stdout.splitlines() if line[:3] in ("ce ", "dr ")
    }
    mean, std = expected(metrics, "ce", "all")
    assert rows["ce"][1:5] == ["2", f"{mean:.2f}", "±", f"{std:.2f}"]
    assert rows["dr"][1:3] == ["1", f"{expected(metrics, 'dr', 'all')[0]:.2f}"]
    assert "[ltray] report: " in stdout


def test_the_json_holds_the_runs_numbers(report):
    out, _, metrics = report
    payload = json.loads((out / "report.json").read_text())
    by_label = {m["label"]: m for m in payload["methods"]}
    for method in ("ce", "dr"):
        for column in COLUMNS:
            mean, std = expected(metrics, method, column)
            got = by_label[method][column]
            assert got["mean"] == pytest.approx(mean, rel=1e-12)  # same float64 arithmetic
            assert (got["std"] is None) if np.isnan(std) else got["std"] == pytest.approx(std)


def test_the_figures_decode_and_are_not_blank(report):
    out, _, _ = report
    figures = sorted((out / "figures").glob("*.png"))
    names = {p.stem for p in figures}
    assert "accuracy_by_group" in names and len(figures) >= 2, names
    for path in figures:
        pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
        assert min(pixels.shape) >= 200, path.name
        assert pixels.std() > 10 and len(np.unique(pixels)) > 20, f"{path.name} looks blank"
    text = (out / "report.md").read_text()
    for path in figures:
        assert f"](figures/{path.name})" in text


class _Page(HTMLParser):
    """What the rendered DOM says: the checker's counts, the table's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.cells: list[dict[str, str]] = []
        self._cell: dict[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = attrs
        elif tag == "td" and "data-column" in attrs:
            self._cell = {**attrs, "text": ""}
            self.cells.append(self._cell)

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


CHECKER = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.dataset.images = images.length;
  document.body.dataset.loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.tableRows = document.querySelectorAll("#methods tbody tr").length;
});
</script>"""


def chromium(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-extensions", "--hide-scrollbars",
         f"--user-data-dir={cwd / 'profile'}", "--virtual-time-budget=10000", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt install chromium)")
def test_the_page_renders_in_chromium_with_every_figure_and_the_right_numbers(
    report, tmp_path, record_property
):
    out, _, metrics = report
    page = (out / "report.html").read_text()
    assert "<script" not in page and "http" not in page.split("<body>")[0]  # nothing to fetch
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", CHECKER + "</body>"))
    dom = _Page()
    dom.feed(chromium("--dump-dom", checked.as_uri(), cwd=tmp_path))
    images = int(dom.body["data-images"])
    assert images == len(list((out / "figures").glob("*.png")))
    assert int(dom.body["data-loaded"]) == images, "a figure did not load"
    assert dom.body["data-table-rows"] == "2"
    assert len(dom.cells) == 8
    labels = iter(["ce"] * 4 + ["dr"] * 4)
    for cell in dom.cells:
        method = next(labels)
        mean, std = expected(metrics, method, cell["data-column"])
        shown = f"{mean:.2f}" if np.isnan(std) else f"{mean:.2f} ± {std:.2f}"
        assert cell["text"] == shown, (method, cell)

    screenshot = tmp_path / "report.png"
    page_url = (out / "report.html").as_uri()
    chromium("--window-size=1280,2400", f"--screenshot={screenshot}", page_url, cwd=tmp_path)
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2400, 1280) and pixels.std() > 10
    kept = Path(os.environ.get("LTRAY_TEST_OUTPUT", tmp_path)) / "report-screenshot.png"
    kept.parent.mkdir(parents=True, exist_ok=True)
    if kept != screenshot:
        shutil.copy(screenshot, kept)
    record_property("screenshot", str(kept))
    print(f"screenshot: {kept}")
