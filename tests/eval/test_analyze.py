"""``ltray analyze`` on real runs (ce and dr, trained in this folder's fixtures): the figures
training logged, the overlay the command draws and logs, the epochs it draws, and one
``error:`` line for each bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from data_support import error_line
from PIL import Image
from typer.testing import CliRunner

from ltray.analysis import figures
from ltray.analysis.analyze import RunHistory, log_run_figures, resolve_epochs
from ltray.cli import app
from ltray.errors import LtrayError

PER_CLASS = ("classifier_norm.png", "feature_norm.png", "cosine.png")
SINGLE_PANEL = ("angle_distribution.png", "accuracy.png")
FIGURES = (*PER_CLASS, *SINGLE_PANEL)
RUN_COLOURS = {"first run": (31, 119, 180), "second run": (255, 127, 14)}  # tab:blue, tab:orange


def analyze(*args: str):
    return CliRunner().invoke(app, ["analyze", *args])


def one_error(*args: str) -> str:
    return error_line(analyze(*args))


def panel_size(panels: int) -> tuple[int, int]:
    width, height = figures.PANEL_INCHES
    return round(width * panels * figures.DPI), round(height * figures.DPI)


def assert_drawn(data: bytes, panels: int) -> np.ndarray:
    """A PNG of ``panels`` panels with something drawn on it: many colours (lines, text,
    antialiasing), not one flat fill."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == panel_size(panels)
    pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    assert pixels.std() > 20
    return pixels


def has_colour(pixels: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((np.abs(pixels.astype(int) - rgb).sum(axis=2) < 30).sum() > 20)


def test_training_logged_the_figures(trained):
    client = mlflow.MlflowClient(trained.tracking_uri)
    logged = {Path(f.path).name for f in client.list_artifacts(trained.run_id, "analysis")}
    assert set(FIGURES) | {"analysis.json"} <= logged
    folder = Path(client.download_artifacts(trained.run_id, "analysis", str(trained.workdir)))
    for name in FIGURES:  # 2 epochs evaluated: the first and the last, side by side
        assert_drawn((folder / name).read_bytes(), 2 if name in PER_CLASS else 1)
    index = json.loads((folder / "analysis.json").read_text())
    assert index["runs"] == [
        {"run_id": trained.run_id, "label": f"ce, seed 0 ({trained.run_name})", "epochs": [0, 1]}
    ]


def test_analyze_overlays_two_runs_and_logs_the_figures_to_each(trained, trained_dr, tmp_path):
    out = tmp_path / "dr-vs-ce"
    result = analyze(
        trained_dr.run_id, trained.run_id, "--tracking-uri", trained.tracking_uri,
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = [Path(line) for line in result.stdout.splitlines() if line.startswith("/")]
    assert {p.name for p in printed} == {*FIGURES, "analysis.json"}
    for name in FIGURES:
        pixels = assert_drawn((out / name).read_bytes(), 2 if name in PER_CLASS else 1)
        for run, colour in RUN_COLOURS.items():
            assert has_colour(pixels, colour), f"{name}: the {run} is not drawn"
    index = json.loads((out / "analysis.json").read_text())
    assert [run["label"].split(",")[0] for run in index["runs"]] == ["dr", "ce"]
    client = mlflow.MlflowClient(trained.tracking_uri)
    for run in (trained, trained_dr):
        logged = {f.path for f in client.list_artifacts(run.run_id, "analysis/dr-vs-ce")}
        assert logged == {f"analysis/dr-vs-ce/{n}" for n in (*FIGURES, "analysis.json")}


def test_epochs_choose_the_panels(trained, tmp_path):
    out = tmp_path / "last"
    args = ("--tracking-uri", trained.tracking_uri, "--out", str(out), "--no-log")
    result = analyze(trained.run_id, "--epochs", "-1", *args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "analysis.json").read_text())["runs"][0]["epochs"] == [1]
    assert_drawn((out / "classifier_norm.png").read_bytes(), panels=1)
    line = one_error(trained.run_id, "--epochs", "0,7", *args)
    assert f"run {trained.run_id}" in line and "did not evaluate epoch 7" in line
    assert "evaluated epochs 0, 1" in line
    assert "-3" in one_error(trained.run_id, "--epochs", "-3", *args)
    assert "'0;1'" in one_error(trained.run_id, "--epochs", "0;1", *args)


def test_bad_runs_are_one_line(trained):
    uri = trained.tracking_uri
    missing = "0" * 32
    line = one_error(missing, "--tracking-uri", uri)
    assert missing in line and "no MLflow run" in line
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("analyze-bad-input")  # apart from the trained runs
    empty = client.create_run(experiment, run_name="killed-before-eval").info.run_id
    line = one_error(trained.run_id, empty, "--tracking-uri", uri)
    assert empty in line and "logged no decomposition" in line


def history(*epochs: int) -> RunHistory:
    return RunHistory("r" * 32, "ce", {e: {} for e in epochs})


def test_epochs_count_from_the_end_when_negative():
    run = history(4, 9, 14, 19)  # evaluated every 5 epochs
    assert resolve_epochs(run) == [4, 19]
    assert resolve_epochs(run, [-1, 9, 19]) == [19, 9]
    assert resolve_epochs(history(0)) == [0]
    with pytest.raises(LtrayError, match="did not evaluate epoch 5; it evaluated epochs 4, 9"):
        resolve_epochs(run, [5])
    with pytest.raises(LtrayError, match="epoch -5"):
        resolve_epochs(run, [-5])


def test_a_plotting_failure_is_one_warning_line(monkeypatch):
    def broken(*args):
        raise RuntimeError("no font\nsecond line")

    monkeypatch.setattr(figures, "draw_all", broken)
    logged, said = [], []
    tracker = type("Tracker", (), {"log_file": lambda self, *a: logged.append(a)})()
    log_run_figures(tracker, history(0), said.append)
    assert said == ["warning: the analysis figures were not logged: no font"]
    assert logged == []


def decomposition_record(num_classes: int, seed: int) -> dict:
    """What training logs for an epoch, from random features and rows."""
    import torch

    from ltray.analysis.decomposition import DecompositionAccumulator, summarize_decomposition
    from ltray.data.profiles import shot_groups

    gen = torch.Generator().manual_seed(seed)
    counts = [max(2, int(500 * 0.01 ** (i / (num_classes - 1)))) for i in range(num_classes)]
    weight = torch.randn(num_classes, 16, generator=gen)
    labels = torch.arange(num_classes).repeat(2)
    accumulator = DecompositionAccumulator(num_classes)
    accumulator.update(torch.randn(len(labels), 16, generator=gen), labels, weight)
    record = summarize_decomposition(accumulator, weight, counts, shot_groups(counts))
    record["per_class"]["accuracy"] = torch.rand(num_classes, generator=gen).mul(100).tolist()
    return record


def test_many_classes_and_records_without_the_histogram(tmp_path):
    """Beyond 60 classes the per-class figures draw dots under bin means; runs logged before
    the angle histogram existed get every figure but the angle distribution."""
    from ltray.analysis.analyze import write_figures

    runs = [
        RunHistory(
            "a" * 32, "dr", {0: decomposition_record(200, 0), 5: decomposition_record(200, 1)}
        ),
        RunHistory(
            "b" * 32, "ce", {0: decomposition_record(200, 2), 5: decomposition_record(200, 3)}
        ),
    ]
    drawn = write_figures(runs, tmp_path / "many")
    assert [p.name for p in drawn] == list(FIGURES)
    for path in drawn:
        pixels = assert_drawn(path.read_bytes(), 2 if path.name in PER_CLASS else 1)
        assert all(has_colour(pixels, colour) for colour in RUN_COLOURS.values()), path.name
    for run in runs:
        for record in run.epochs.values():
            del record["angle_histogram"]
    drawn = write_figures(runs, tmp_path / "old", epochs=[-1])
    assert "angle_distribution.png" not in {p.name for p in drawn}
    assert_drawn((tmp_path / "old" / "cosine.png").read_bytes(), panels=1)
