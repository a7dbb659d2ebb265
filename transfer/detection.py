"""Object detection on a backbone's feature map: an FCOS-style anchor-free head on a ViTDet-style simple
feature pyramid, its training loss, decoding to boxes, and class-aware NMS (OpenCV's).

Conventions
-----------
- Boxes are (x0, y0, x1, y1) in pixels of the input image, x1 / y1 exclusive (so width = x1 - x0).
- Class ids are 1 .. classes - 1; 0 is "unlabeled" and never a box class. The head predicts
  classes - 1 logits: logit channel k scores class id k + 1.
- A "location" is one cell of one pyramid level; all levels are flattened into one sequence of
  L = sum(h_l * w_l) locations, finest level first.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SIZE_RANGE = 8  # a level of stride s regresses boxes with max(l, t, r, b) up to SIZE_RANGE * s pixels
CENTER_RADIUS = 1.5  # positives lie within this many strides of a box centre (and inside the box)
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
PRIOR = 0.01  # initial foreground probability of every class logit
PRE_NMS = 1000  # candidates per image kept (by score) before NMS


def _norm(width: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, width), width)


def _tower(width: int, depth: int = 2) -> nn.Sequential:
    layers = []
    for _ in range(depth):
        layers += [nn.Conv2d(width, width, 3, padding=1), _norm(width), nn.GELU()]
    return nn.Sequential(*layers)


# The simple feature pyramid's levels, as scale factors of the backbone's feature map: those a head may
# have (ViTDet's four; runs made before transfer.det.pyramid existed have all of them), and the default.
# The x4 level (stride 2 pixels on a patch-8 ViT, 4 on a patch-16 one) is left out by default: it held 75 %
# of the locations and most of the head's cost, and without it the dev space procedural-11 (proof recipe,
# 3 seeds, x100) scored alike: fourm seg 14.1 -> 14.5, det mAP 2.6 -> 2.5, CIDEr-D 34.1 -> 37.4; scratch
# 9.8 -> 10.1, 1.4 -> 1.7, 30.5 -> 34.5; each transfer about a quarter faster.
LEVELS = (4, 2, 1, 0.5)
PYRAMID = (2, 1, 0.5)


def pyramid_levels(factors) -> tuple[float, ...]:
    """`factors` as a head's pyramid: distinct factors of LEVELS, finest first; ValueError otherwise."""
    levels = tuple(float(f) for f in factors)
    if not levels or not set(levels) <= set(LEVELS) or list(levels) != sorted(set(levels), reverse=True):
        raise ValueError(f"expected distinct scale factors from {list(LEVELS)}, finest first, got {list(factors)}")
    return levels


def _pyramid_level(factor: float, dim: int, width: int) -> nn.Module:
    """The backbone's feature map (B, dim, h, w) -> (B, width, h x factor, w x factor); factor in LEVELS."""
    if factor == 4:
        return nn.Sequential(nn.ConvTranspose2d(dim, width, 2, 2), _norm(width), nn.GELU(),
                             nn.ConvTranspose2d(width, width, 2, 2))
    if factor == 2:
        return nn.ConvTranspose2d(dim, width, 2, 2)
    if factor == 1:
        return nn.Conv2d(dim, width, 1)
    return nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(dim, width, 1))


class DetectionHead(nn.Module):
    """Simple feature pyramid of the last feature map (ViTDet's levels: x4 and x2 up with transposed convs,
    x1, x0.5 down by max-pooling; `pyramid` picks which, finest first), each level projected to `width`
    channels, then one FCOS head shared by all levels: a classification tower -> classes - 1 logits, a
    regression tower -> ltrb distances and centerness.

    forward(features (B, dim, h, w), image_size (H, W) pixels) -> dict of raw outputs:
      logits      (B, L, classes - 1) class logits (channel k = class id k + 1)
      log_ltrb    (B, L, 4) log(distance / stride) from the location to the box's left, top, right, bottom
                  edges (`pixel_ltrb` turns it into pixels; the exp stays outside the head so exported
                  graphs compare at the network's own scale)
      centerness  (B, L) centerness logits
      points      (L, 2) the locations' (x, y) in pixels (cell centres)
      strides     (L,) the locations' level stride in pixels
      limits      (L, 2) the range (low, high] of max(l, t, r, b) in pixels this location's level learns
    """

    def __init__(self, dim: int, classes: int, width: int = 64, pyramid: tuple[float, ...] = PYRAMID):
        super().__init__()
        if classes < 2:
            raise ValueError("classes counts id 0 (unlabeled) too, so it must be at least 2")
        self.classes = classes
        self.scales = nn.ModuleList([_pyramid_level(factor, dim, width) for factor in pyramid_levels(pyramid)])
        self.necks = nn.ModuleList([nn.Sequential(_norm(width), nn.Conv2d(width, width, 3, padding=1),
                                                  _norm(width), nn.GELU()) for _ in self.scales])
        self.class_tower, self.box_tower = _tower(width), _tower(width)
        self.classify = nn.Conv2d(width, classes - 1, 3, padding=1)
        self.regress = nn.Conv2d(width, 4, 3, padding=1)
        self.center = nn.Conv2d(width, 1, 3, padding=1)
        self.level_scale = nn.Parameter(torch.ones(len(self.scales)))  # per-level exp() scale, as in FCOS
        nn.init.normal_(self.classify.weight, std=0.01)
        nn.init.constant_(self.classify.bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, features: torch.Tensor, image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        H, W = image_size
        logits, log_ltrb, centerness, points, strides, limits = [], [], [], [], [], []
        low = 0.0  # the levels tile the box sizes: each starts where the one before ended
        for level, (scale, neck) in enumerate(zip(self.scales, self.necks)):
            x = neck(scale(features))
            h, w = x.shape[-2:]
            stride_y, stride_x = H / h, W / w
            stride = (stride_x + stride_y) / 2
            c, r = self.class_tower(x), self.box_tower(x)
            logits.append(self.classify(c).flatten(2).transpose(1, 2))
            raw = (self.level_scale[level] * self.regress(r).float()).clamp(max=10.0)  # fp32 under autocast
            log_ltrb.append(raw.flatten(2).transpose(1, 2))
            centerness.append(self.center(r).flatten(2).squeeze(1))
            ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) * stride_y
            xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) * stride_x
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1))
            strides.append(torch.full((h * w,), stride, device=x.device))
            high = math.inf if level == len(self.scales) - 1 else SIZE_RANGE * stride
            limits.append(torch.tensor([[low, high]], device=x.device).expand(h * w, 2))
            low = high
        return {"logits": torch.cat(logits, 1), "log_ltrb": torch.cat(log_ltrb, 1),
                "centerness": torch.cat(centerness, 1),
                "points": torch.cat(points), "strides": torch.cat(strides), "limits": torch.cat(limits)}


def pixel_ltrb(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head's log distances -> (B, L, 4) fp32 distances in pixels: exp(log_ltrb) x the level stride."""
    return outputs["log_ltrb"].float().exp() * outputs["strides"][None, :, None]


def _ltrb_to_boxes(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """points (..., 2), ltrb (..., 4) pixels -> boxes (..., 4) x0, y0, x1, y1 pixels."""
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) x0, y0, x1, y1 -> (...) area in square pixels (0 for empty boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise GIoU of paired boxes a, b (N, 4) -> (N,) in [-1, 1]."""
    inter = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    iou = inter / union.clamp(min=1e-9)
    return iou - (hull - union) / hull.clamp(min=1e-9)


def assign_targets(points: torch.Tensor, strides: torch.Tensor, limits: torch.Tensor, boxes: torch.Tensor,
                   classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FCOS assignment for one image. points (L, 2), strides (L,), limits (L, 2) from the head; boxes (N, 4)
    pixels, classes (N,) ids >= 1. A location is positive for a box when it lies inside the box, within
    CENTER_RADIUS strides of its centre, and its level's size range holds the box's max(l, t, r, b) there;
    ties go to the smallest box.
    -> (class id per location (L,) int64, 0 = background; ltrb target (L, 4) pixels, valid where id > 0)."""
    L = points.shape[0]
    if boxes.numel() == 0:
        return torch.zeros(L, dtype=torch.long, device=points.device), points.new_zeros(L, 4)
    px, py = points[:, 0:1], points[:, 1:2]
    ltrb = torch.stack([px - boxes[:, 0], py - boxes[:, 1], boxes[:, 2] - px, boxes[:, 3] - py], dim=-1)  # (L,N,4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    radius = CENTER_RADIUS * strides[:, None]
    near_centre = ((px - centre[:, 0]).abs() < radius) & ((py - centre[:, 1]).abs() < radius)
    reach = ltrb.amax(-1)
    valid = (ltrb.amin(-1) > 0) & near_centre & (reach > limits[:, :1]) & (reach <= limits[:, 1:])
    area = box_area(boxes)[None, :].expand(L, -1).masked_fill(~valid, math.inf)
    smallest, match = area.min(dim=1)
    target_class = torch.where(torch.isfinite(smallest), classes[match], torch.zeros_like(match))
    return target_class, ltrb[torch.arange(L, device=points.device), match]


def _centerness(ltrb: torch.Tensor) -> torch.Tensor:
    """(N, 4) positive distances -> (N,) sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) in [0, 1]."""
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (lr.amin(-1) / lr.amax(-1).clamp(min=1e-9)) * (tb.amin(-1) / tb.amax(-1).clamp(min=1e-9))
    return ratio.clamp(min=0).sqrt()


def detection_loss(outputs: dict[str, torch.Tensor], boxes: list[torch.Tensor], classes: list[torch.Tensor],
                   image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """FCOS loss over a batch. outputs: DetectionHead's; boxes: per image (N_i, 4) x0, y0, x1, y1 pixels;
    classes: per image (N_i,) int64 ids >= 1 (boxes of class 0 are ignored); image_size (H, W) pixels,
    the size `outputs` were made for (their locations already carry it, so it is not read again).
    -> {"total", "classification" (sigmoid focal loss summed over locations and classes, per positive),
        "box" (1 - GIoU, centerness-weighted over positives), "centerness" (BCE over positives)}.
    Images without boxes contribute background only."""
    logits, ltrb, centerness = outputs["logits"].float(), pixel_ltrb(outputs), outputs["centerness"].float()
    points, strides, limits = outputs["points"], outputs["strides"], outputs["limits"]
    target_class, target_ltrb = [], []
    for b, c in zip(boxes, classes):
        b, c = b.to(points.device, torch.float32), c.to(points.device)
        keep = c > 0
        t_class, t_ltrb = assign_targets(points, strides, limits, b[keep], c[keep])
        target_class.append(t_class)
        target_ltrb.append(t_ltrb)
    target_class, target_ltrb = torch.stack(target_class), torch.stack(target_ltrb)  # (B, L), (B, L, 4)
    positive = target_class > 0
    count = positive.sum().clamp(min=1).float()

    one_hot = F.one_hot(target_class, logits.shape[-1] + 1)[..., 1:].to(logits.dtype)
    classification = _focal_loss(logits, one_hot).sum() / count

    if positive.any():
        target_ltrb = target_ltrb[positive]
        target_center = _centerness(target_ltrb)
        location = points[None].expand(positive.shape[0], -1, -1)[positive]
        giou = generalized_iou(_ltrb_to_boxes(location, ltrb[positive]), _ltrb_to_boxes(location, target_ltrb))
        box = ((1 - giou) * target_center).sum() / target_center.sum().clamp(min=1e-6)
        center = F.binary_cross_entropy_with_logits(centerness[positive], target_center)
    else:  # zero, but still attached to the graph so every parameter gets a (zero) gradient
        box, center = ltrb.sum() * 0, centerness.sum() * 0
    return {"total": classification + box + center, "classification": classification, "box": box,
            "centerness": center}


def _focal_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Element-wise sigmoid focal loss (Lin et al. 2017), same shape as logits."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = FOCAL_ALPHA * targets + (1 - FOCAL_ALPHA) * (1 - targets)
    return alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA


@torch.no_grad()
def decode(outputs: dict[str, torch.Tensor], image_size: tuple[int, int], score_threshold: float = 0.05,
           iou_threshold: float = 0.6, max_detections: int = 100) -> list[dict[str, torch.Tensor]]:
    """Raw head outputs -> one dict per image: boxes (K, 4) float x0, y0, x1, y1 pixels clipped to the image,
    scores (K,) in [0, 1] = sqrt(class probability x centerness), classes (K,) int64 ids >= 1; sorted by
    score, after class-aware NMS, K <= max_detections. Every (location, class) pair scoring at least
    score_threshold is a candidate (at most PRE_NMS per image, the best)."""
    H, W = image_size
    scores = (outputs["logits"].float().sigmoid() * outputs["centerness"].float().sigmoid()[..., None]).sqrt()
    boxes = _ltrb_to_boxes(outputs["points"][None], pixel_ltrb(outputs))  # (B, L, 4); scores (B, L, C-1)
    boxes = torch.stack([boxes[..., 0].clamp(0, W), boxes[..., 1].clamp(0, H),
                         boxes[..., 2].clamp(0, W), boxes[..., 3].clamp(0, H)], dim=-1)
    results = []
    for image_scores, image_boxes in zip(scores, boxes):
        flat = image_scores.flatten()
        passing = flat >= score_threshold
        if int(passing.sum()) > PRE_NMS:  # topk straight away: no list of every passing index first
            candidates = flat.masked_fill(~passing, -torch.inf).topk(PRE_NMS).indices  # (a NaN score never passes)
        else:
            candidates = torch.nonzero(passing).squeeze(1)
        location, channel = candidates // image_scores.shape[1], candidates % image_scores.shape[1]
        box, score, cls = image_boxes[location], flat[candidates], channel + 1
        keep = first_kept(box, score, cls, iou_threshold, max_detections)
        results.append({"boxes": box[keep], "scores": score[keep], "classes": cls[keep].long()})
    return results


def first_kept(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float,
               count: int) -> torch.Tensor:
    """batched_nms(boxes, scores, classes, iou_threshold)[:count] without running NMS over every box.

    Greedy NMS decides each box from the higher-scoring boxes alone, so NMS over the best M boxes keeps
    exactly what NMS over all of them keeps among those M. Prefixes of the boxes by descending score (ties
    in input order, as OpenCV's stable sort takes them) are tried, 2 x count first and 4x longer each time,
    until one yields `count` kept boxes or holds every box: a cost of about count x prefix pairs instead of
    N x kept (1000 candidates from an untrained head: 2.9 -> 0.2 ms)."""
    order = scores.argsort(descending=True, stable=True)
    boxes, scores, classes = boxes[order], scores[order], classes[order]
    prefix = 2 * count
    while True:
        keep = batched_nms(boxes[:prefix], scores[:prefix], classes[:prefix], iou_threshold)
        if len(keep) >= count or prefix >= len(boxes):
            return order[keep[:count]]
        prefix *= 4


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """Class-aware greedy non-maximum suppression. boxes (N, 4) x0, y0, x1, y1 pixels, scores (N,),
    classes (N,) int. A box is dropped when its IoU with a higher-scoring kept box of the same class is
    above iou_threshold. -> (K,) int64 indices into the inputs of the kept boxes, by descending score.

    OpenCV's NMSBoxesBatched (C++, double precision) does the work: it compares each box only with the
    boxes kept so far, where an IoU matrix over every pair cost ~3.6x more at 1000 boxes. One difference
    from a plain IoU: OpenCV counts two zero-area boxes as identical, so of a class's empty boxes only the
    best is kept."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    corners = boxes.detach().double().cpu().numpy()
    xywh = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxesBatched(xywh, scores.detach().double().cpu().numpy(),
                                   classes.detach().cpu().numpy().astype(np.int32), -np.inf, float(iou_threshold))
    return torch.from_numpy(np.asarray(keep, dtype=np.int64).reshape(-1)).to(boxes.device)
