"""The pieces of ``ltray eval`` on hand-made numbers: top-5, the expected calibration error
against a float64 reference, the grouped confusion matrix, tau's selection, the job read back
from MLflow params, and the cosine head that tau-norm cannot change."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ltray.analysis.calibration import bin_sums, expected_calibration_error
from ltray.analysis.confusion import confusion_matrix, group_confusion, shown_confusion
from ltray.analysis.evaluation import Source, check_tau_norm_possible, choose_tau
from ltray.config import LossConfig, ModelConfig
from ltray.errors import LtrayError
from ltray.losses import build_loss, head_for
from ltray.models import LinearHead, build_model
from ltray.train.evaluate import EvalCounts
from ltray.train.run_info import job_from_params, run_params


def reference_ece(logits: list[list[float]], labels: list[int], bins: int = 15) -> float:
    """Guo et al. 2017, written out in float64: confidence = max softmax, bins ((m-1)/M, m/M]."""
    total, n = 0.0, len(labels)
    rows = []
    for row, label in zip(logits, labels, strict=True):
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        probs = [e / sum(exps) for e in exps]
        predicted = max(range(len(row)), key=lambda j: (row[j], -j))
        rows.append((probs[predicted], predicted == label))
    for m in range(1, bins + 1):
        members = [(c, hit) for c, hit in rows if (m - 1) / bins < c <= m / bins]
        if members:
            confidence = sum(c for c, _ in members) / len(members)
            accuracy = sum(hit for _, hit in members) / len(members)
            total += len(members) / n * abs(accuracy - confidence)
    return total


def test_ece_matches_a_float64_reference_overall_and_per_class():
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(200, 6, generator=gen) * 3.0).float()
    labels = torch.randint(0, 6, (200,), generator=gen)
    bins = bin_sums(logits, labels, 6)
    want = reference_ece(logits.double().tolist(), labels.tolist())
    assert expected_calibration_error(bins) == pytest.approx(want, rel=1e-12, abs=1e-15)
    # the ECE of one class's images is the reference on those images only
    mine = labels == 2
    want2 = reference_ece(logits[mine].double().tolist(), labels[mine].tolist())
    assert expected_calibration_error(bins, [2]) == pytest.approx(want2, rel=1e-12, abs=1e-15)


def test_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins 14 and 9;
    # |1/2 - 0.9| * 2/3 + |1 - 0.6| * 1/3 = 0.4 * 2/3 + 0.4 / 3 = 0.4
    p = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]], dtype=torch.float64)
    logits = p.log().float()
    bins = bin_sums(logits, torch.tensor([0, 0, 0]), 2)
    assert expected_calibration_error(bins) == pytest.approx(0.4, abs=1e-7)  # float32 logits


def test_top5_counts_and_metrics():
    counts = EvalCounts.empty(7)
    logits = torch.tensor(
        [
            [7.0, 6, 5, 4, 3, 2, 1],  # label 0: top-1
            [7.0, 6, 5, 4, 3, 2, 1],  # label 4: 5th, in the top 5
            [7.0, 6, 5, 4, 3, 2, 1],  # label 5: 6th, out
            [1.0, 2, 3, 4, 5, 6, 7],  # label 6: top-1
        ]
    )
    counts.add_predictions(logits, torch.tensor([0, 4, 5, 6]))
    groups = ["many", "many", "medium", "medium", "few", "few", "few"]
    metrics = counts.metrics(groups, list("abcdefg"), "x", detailed=True)
    assert metrics["x/acc"] == 50.0 and metrics["x/acc5"] == 75.0
    assert metrics["x/acc5_class/e"] == 100.0 and metrics["x/acc5_class/f"] == 0.0
    assert metrics["x/acc5_few"] == pytest.approx(200.0 / 3)  # e, f, g: 1, 0, 1
    assert "x/ece" in metrics and "x/ece_many" in metrics
    # training's own report stays top-1 only
    assert not any("acc5" in k or "ece" in k for k in counts.metrics(groups, list("abcdefg"), "x"))


def test_the_confusion_above_20_classes_is_grouped_many_medium_few():
    classes = [f"c{i}" for i in range(30)]
    groups = ["many"] * 10 + ["medium"] * 10 + ["few"] * 10
    labels = torch.arange(30).repeat_interleave(4)  # 4 images per class
    predicted = labels.clone()
    predicted[labels >= 20] = 0  # every few-shot image predicted as class 0 (many)
    predicted[(labels >= 10) & (labels < 20)] = torch.tensor([10, 11, 25, 0] * 10)  # mixed
    matrix = confusion_matrix(labels, predicted, 30)
    assert matrix.sum() == 120 and matrix[25, 0] == 4
    grouped = group_confusion(matrix, groups)
    # medium: 2 of 4 stay medium (10, 11), 1 goes few (25), 1 goes many (0)
    assert grouped.tolist() == [[40, 0, 0], [10, 20, 10], [40, 0, 0]]
    rates, labels_shown = shown_confusion(matrix, groups, classes)
    assert labels_shown == ["many", "medium", "few"]
    torch.testing.assert_close(
        rates, torch.tensor([[1.0, 0, 0], [0.25, 0.5, 0.25], [1.0, 0, 0]], dtype=torch.float64)
    )
    small, names = shown_confusion(matrix[:20, :20], groups[:20], classes[:20])
    assert names == classes[:20] and small.shape == (20, 20)


def test_tau_is_chosen_on_the_val_features_it_is_given():
    # row 0 is long (norm 4), row 1 short (norm 1): without tau-norm (tau 0) class 0 wins
    # everywhere near the boundary; with unit rows (tau 1) the angle decides
    head = LinearHead(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
        head.bias.zero_()
    # "val": a class-1 image at 52 degrees (closer to row 1 by angle): only tau 1 gets it
    val_f = torch.tensor([[1.0, 0.0], [math.cos(0.9), math.sin(0.9)]])
    val_y = torch.tensor([0, 1])
    tau, scores = choose_tau(head, val_f, val_y, [0.0, 1.0])
    assert tau == 1.0 and scores == {0.0: 50.0, 1.0: 100.0}
    # another split (a class-0 image at 52 degrees) would pick tau 0: the choice follows val
    test_f = torch.tensor([[math.cos(0.9), math.sin(0.9)], [0.0, 1.0]])
    test_y = torch.tensor([0, 1])
    assert choose_tau(head, test_f, test_y, [0.0, 1.0])[0] == 0.0


def test_tau_norm_on_a_cosine_head_is_refused_as_a_no_op():
    from train_support import make_job

    job = make_job("./unused", Path("."), loss={"name": "dr"})
    loss = LossConfig(name="dr")
    model = build_model(ModelConfig(), 3, head=head_for(loss, ModelConfig()))
    source = Source(job, model, build_loss(loss, [9, 3, 1]), ["a", "b", "c"], [9, 3, 1], "r")
    with pytest.raises(LtrayError, match="cosine head .* tau-norm would change nothing"):
        check_tau_norm_possible(source)


def test_the_job_comes_back_from_its_mlflow_params(tmp_path):
    from train_support import make_job

    job = make_job(
        "s3://bucket/ds", tmp_path,
        data={"storage_options": {"key": "k-123"}, "mean": [0.5, 0.4, 0.3]},
        loss={"name": "tau_norm", "decoupled": {"tau_grid": [0.0, 0.5]}},
    )  # fmt: skip
    params = {k: str(v) for k, v in run_params(job, "t-1", 1, 0.05).items()}
    back = job_from_params(params, "run")
    assert back.data.storage_options == {}  # masked in the params: left to the environment
    assert back.model_dump(exclude={"data": {"storage_options"}}) == job.model_dump(
        exclude={"data": {"storage_options"}}
    )
