"""Classification metrics computed from predictions, as scikit-learn's classification_report does."""

from __future__ import annotations

import torch


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are true classes, columns predicted classes."""
    index = targets.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(targets: torch.Tensor, preds: torch.Tensor, num_classes: int,
                           topk_hits: dict[int, int] | None = None) -> dict:
    """Top-1, per-class precision/recall/F1 and their macro average (zero where undefined, like sklearn)."""
    targets, preds = targets.cpu(), preds.cpu()
    cm = confusion_matrix(targets, preds, num_classes).double()
    tp = cm.diag()
    predicted = cm.sum(0)
    actual = cm.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    n = len(targets)
    out = {
        "n": n,
        "top1": float(tp.sum() / max(n, 1)),
        "precision_per_class": precision.tolist(),
        "recall_per_class": recall.tolist(),
        "f1_per_class": f1.tolist(),
        "support_per_class": actual.long().tolist(),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "confusion_matrix": cm.long().tolist(),
    }
    for k, hits in (topk_hits or {}).items():
        out[f"top{k}"] = hits / max(n, 1)
    return out


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """How many targets are among the k largest logits, as a tensor on the logits' device (no sync)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == targets.unsqueeze(1)).any(dim=1).sum()
