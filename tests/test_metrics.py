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
