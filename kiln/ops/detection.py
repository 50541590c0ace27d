"""Ops of the 'detection' family: NonMaxSuppression."""
from __future__ import annotations

import torch

from .registry import OpSet
from .shape_util import scalar

ops = OpSet("detection")

# Greedy NMS is sequential; boxes are decided in blocks of this many, each block resolved with a
# few vectorized passes, so the Python loop runs over blocks rather than boxes.
_BLOCK = 64


def _corners(boxes: torch.Tensor, center_point_box: int):
    """(x_min, y_min, x_max, y_max) per box; corner boxes may list either diagonal."""
    if center_point_box:
        xc, yc, w, h = boxes.unbind(-1)
        return xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
    y1, x1, y2, x2 = boxes.unbind(-1)
    return torch.minimum(x1, x2), torch.minimum(y1, y2), torch.maximum(x1, x2), torch.maximum(y1, y2)


def _overlaps(boxes: torch.Tensor, center_point_box: int, iou_threshold: float) -> torch.Tensor:
    """(N, N) bool: IoU of boxes i and j exceeds the threshold. Empty intersections and degenerate
    boxes never suppress."""
    x0, y0, x1, y1 = _corners(boxes, center_point_box)
    iw = torch.minimum(x1[:, None], x1[None, :]) - torch.maximum(x0[:, None], x0[None, :])
    ih = torch.minimum(y1[:, None], y1[None, :]) - torch.maximum(y0[:, None], y0[None, :])
    inter = iw * ih
    area = (x1 - x0) * (y1 - y0)
    union = area[:, None] + area[None, :] - inter
    valid = (iw > 0) & (ih > 0) & (inter > 0) & (area[:, None] > 0) & (area[None, :] > 0) & (union > 0)
    return valid & (inter / torch.where(valid, union, torch.ones_like(union)) > iou_threshold)


def _greedy_keep(over: torch.Tensor, limit: int) -> torch.Tensor:
    """Which boxes greedy NMS keeps, for boxes in descending score order with pairwise ``over``laps.

    Box i is kept iff no kept box before it overlaps it. Within a block that rule is iterated to its
    (unique) fixed point; kept boxes of earlier blocks are applied in one step.
    """
    m = over.shape[0]
    earlier = over.tril(-1)
    keep = torch.zeros(m, dtype=torch.bool, device=over.device)
    for start in range(0, m, _BLOCK):
        stop = min(start + _BLOCK, m)
        alive = ~(earlier[start:stop, :start] & keep[:start]).any(1)
        inner = earlier[start:stop, start:stop]
        k = alive
        while True:
            nxt = alive & ~(inner & k).any(1)
            if torch.equal(nxt, k):
                break
            k = nxt
        keep[start:stop] = k
        if int(keep.sum()) >= limit:
            break
    return keep


@ops.op("NonMaxSuppression", host_inputs=(2, 3, 4))
def non_max_suppression(ctx, inputs, attrs):
    """Per batch and class, keeps boxes by descending score (ties: lower index first) that do not overlap
    a kept box by more than ``iou_threshold``, up to ``max_output_boxes_per_class`` (default 0: none);
    scores must exceed ``score_threshold`` when given. Output rows are (batch, class, box)."""
    boxes, scores = inputs[0], inputs[1]
    opt = lambda i, d: scalar(inputs[i] if len(inputs) > i else None, d)  # noqa: E731
    limit, iou_threshold, score_threshold = int(opt(2, 0)), float(opt(3, 0.0)), opt(4, None)
    center = attrs.get("center_point_box", 0)
    device = boxes.device
    rows = []
    n_batch, n_class, _ = scores.shape
    for b in range(n_batch if limit > 0 else 0):
        over = _overlaps(boxes[b], center, iou_threshold)
        for c in range(n_class):
            s = scores[b, c]
            order = torch.sort(s, descending=True, stable=True).indices
            if score_threshold is not None:
                order = order[: int((s > score_threshold).sum())]
            keep = _greedy_keep(over[order][:, order], limit)
            chosen = order[keep][:limit]
            bc = torch.tensor([b, c], dtype=torch.int64, device=device).expand(chosen.shape[0], 2)
            rows.append(torch.cat([bc, chosen.unsqueeze(1)], 1))
    if not rows:
        return torch.zeros((0, 3), dtype=torch.int64, device=device)
    return torch.cat(rows)
