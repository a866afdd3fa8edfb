import torch

from ltray.analysis.accuracy import accuracy_report


def test_group_accuracy_is_mean_of_class_accuracies():
    correct = torch.tensor([9.0, 5.0, 1.0, 0.0])
    seen = torch.tensor([10.0, 10.0, 10.0, 0.0])
    out = accuracy_report(correct, seen, ["many", "medium", "few", "few"], list("abcd"), "val")
    assert out["val/acc"] == 50.0
    assert out["val/acc_many"] == 90.0 and out["val/acc_medium"] == 50.0
    assert out["val/acc_few"] == 10.0  # class d was never seen: left out, not counted as zero
    assert "val/acc_class/d" not in out and out["val/acc_class/b"] == 50.0


def test_balanced_accuracy_is_the_mean_over_evaluated_classes():
    # 9/10, 5/10, 1/2: overall 15/22, balanced (0.9 + 0.5 + 0.5) / 3; class d is not evaluated
    correct = torch.tensor([9.0, 5.0, 1.0, 0.0])
    seen = torch.tensor([10.0, 10.0, 2.0, 0.0])
    out = accuracy_report(correct, seen, ["many", "medium", "few", "few"], list("abcd"), "val")
    assert out["val/acc"] == 100.0 * 15 / 22
    # the mean of three float64 ratios: exact to a few ulps
    assert abs(out["val/acc_balanced"] - 100.0 * (0.9 + 0.5 + 0.5) / 3) < 1e-12
