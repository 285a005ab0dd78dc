import pytest
import torch

from cnnrepro.engine import metrics


def test_classification_metrics_match_hand_computed_values():
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 2])
    out = metrics.classification_metrics(targets, preds, 3)
    assert out["top1"] == pytest.approx(4 / 6)
    assert out["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert out["precision_per_class"] == pytest.approx([0.5, 2 / 3, 1.0])
    assert out["recall_per_class"] == pytest.approx([0.5, 1.0, 0.5])
    f1 = [0.5, 0.8, 2 / 3]
    assert out["f1_per_class"] == pytest.approx(f1) and out["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_absent_class_scores_zero_like_sklearn():
    out = metrics.classification_metrics(torch.tensor([0, 0]), torch.tensor([0, 0]), 2)
    assert out["f1_per_class"] == [1.0, 0.0] and out["macro_f1"] == 0.5


def test_topk_hits():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.02, 0.08]])
    assert metrics.topk_hits(logits, torch.tensor([2, 1]), 2) == 1
    assert metrics.topk_hits(logits, torch.tensor([2, 1]), 5) == 2
