"""Detection head, loss, decoding and NMS, and the COCO metric (against pycocotools)."""

from __future__ import annotations

import contextlib
import copy
import io
import time

import pytest
import torch

from tst.transfer.coco import DetectionScore, to_coco
from tst.transfer.detection import DetectionHead, batched_nms, decode, detection_loss, first_kept

NAMES = {1: "chair", 2: "table", 3: "lamp"}


def test_batched_nms_suppresses_overlaps_within_a_class_only():
    boxes = torch.tensor([[0, 0, 10, 10],      # 0: class 1, best
                          [1, 1, 11, 11],      # 1: class 1, IoU 81/119 = 0.68 with 0 -> suppressed
                          [0, 0, 10, 10],      # 2: class 2, identical to 0 but another class -> kept
                          [20, 20, 30, 30],    # 3: class 1, IoU 0.82 with 5 (scored higher) -> suppressed
                          [0, 0, 10, 5],       # 4: class 1, IoU 0.5 with 0 -> kept at threshold 0.6
                          [21, 20, 31, 30]],   # 5: class 1, disjoint from 0 and 1 -> kept
                         dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.65])
    classes = torch.tensor([1, 1, 2, 1, 1, 1])
    assert batched_nms(boxes, scores, classes, 0.6).tolist() == [0, 2, 5, 4]
    assert batched_nms(boxes, scores, classes, 0.4).tolist() == [0, 2, 5]
    assert batched_nms(boxes[:0], scores[:0], classes[:0], 0.5).tolist() == []


def test_batched_nms_is_quick_on_thousands_of_boxes():
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(3000, 2, generator=generator) * 600
    boxes = torch.cat([corner, corner + 20 + torch.rand(3000, 2, generator=generator) * 80], dim=1)
    scores, classes = torch.rand(3000, generator=generator), torch.randint(1, 10, (3000,), generator=generator)
    start = time.perf_counter()
    keep = batched_nms(boxes, scores, classes, 0.5)
    assert time.perf_counter() - start < 2.0
    assert (scores[keep].diff() <= 0).all()
    for c in classes.unique():  # no two kept boxes of one class overlap above the threshold
        kept = boxes[keep[classes[keep] == c]]
        top_left = torch.maximum(kept[:, None, :2], kept[None, :, :2])
        inter = (torch.minimum(kept[:, None, 2:], kept[None, :, 2:]) - top_left).clamp(min=0).prod(-1)
        area = (kept[:, 2:] - kept[:, :2]).prod(-1)
        iou = inter / (area[:, None] + area[None, :] - inter)
        assert (iou.fill_diagonal_(0) <= 0.5).all()


def reference_nms(boxes, scores, classes, threshold):
    """Textbook class-aware greedy NMS over a full IoU matrix (the definition batched_nms must meet)."""
    order = scores.argsort(descending=True).tolist()
    kept = []
    for i in order:
        if kept:
            same = classes[kept] == classes[i]
            top_left = torch.maximum(boxes[i, :2], boxes[kept, :2])
            inter = (torch.minimum(boxes[i, 2:], boxes[kept, 2:]) - top_left).clamp(min=0).prod(-1)
            area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
            iou = inter / (area[i] + area[kept] - inter)
            if (same & (iou > threshold)).any():
                continue
        kept.append(i)
    return kept


def test_batched_nms_equals_textbook_greedy_nms_on_random_boxes():
    generator = torch.Generator().manual_seed(1)
    for count in (1, 7, 60, 400):
        corner = torch.rand(count, 2, generator=generator) * 100
        boxes = torch.cat([corner, corner + 1 + torch.rand(count, 2, generator=generator) * 50], dim=1)
        scores, classes = torch.rand(count, generator=generator), torch.randint(1, 6, (count,), generator=generator)
        for threshold in (0.3, 0.6):
            assert batched_nms(boxes, scores, classes, threshold).tolist() == reference_nms(boxes, scores, classes,
                                                                                            threshold)



def test_first_kept_is_nms_over_every_box_cut_to_count():
    """NMS over growing prefixes of the boxes by score keeps what NMS over all of them keeps, in order;
    with few boxes suppressed (small, spread boxes) and with most suppressed (large, piled-up ones), and
    with tied scores."""
    generator = torch.Generator().manual_seed(2)
    for count, spread, size in ((1000, 120, 8), (1000, 30, 60), (50, 100, 20)):
        corner = torch.rand(count, 2, generator=generator) * spread
        boxes = torch.cat([corner, corner + 1 + torch.rand(count, 2, generator=generator) * size], dim=1)
        scores = (torch.rand(count, generator=generator) * 50).round() / 50  # many ties
        classes = torch.randint(1, 4, (count,), generator=generator)
        for keep in (1, 10, 100):
            assert first_kept(boxes, scores, classes, 0.5, keep).tolist() == \
                batched_nms(boxes, scores, classes, 0.5)[:keep].tolist()


def toy_set():
    """3 images, 3 classes: hits at varied IoU, a duplicate, false positives, a miss, an empty image."""
    t = torch.tensor
    truths = [{"boxes": t([[10., 10., 50., 60.], [60., 20., 90., 40.], [5., 70., 25., 95.]]), "classes": t([1, 2, 1])},
              {"boxes": t([[0., 0., 30., 30.], [40., 40., 80., 100.]]), "classes": t([3, 2])},
              {"boxes": torch.zeros(0, 4), "classes": torch.zeros(0, dtype=torch.long)}]
    predictions = [{"boxes": t([[12., 11., 50., 58.], [61., 22., 88., 41.], [11., 10., 49., 61.],
                                [70., 70., 90., 90.]]),
                    "scores": t([0.9, 0.75, 0.6, 0.8]), "classes": t([1, 2, 1, 1])},
                   {"boxes": t([[2., 1., 27., 33.], [40., 45., 70., 100.], [0., 0., 30., 30.]]),
                    "scores": t([0.55, 0.7, 0.3]), "classes": t([3, 2, 2])},
                   {"boxes": t([[10., 10., 20., 20.]]), "scores": t([0.4]), "classes": t([3])}]
    return truths, predictions


def test_detection_score_matches_pycocotools():
    pycoco = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    truths, predictions = toy_set()
    score = DetectionScore(NAMES)
    score.update(predictions[:2], truths[:2])  # two batches accumulate
    score.update(predictions[2:], truths[2:])
    ours = score.compute()

    ground_truth, detections = to_coco(truths, predictions, NAMES)
    reference = pycoco.COCO()
    reference.dataset = copy.deepcopy(ground_truth)
    reference.createIndex()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        evaluation = cocoeval.COCOeval(reference, reference.loadRes(copy.deepcopy(detections)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert 0.1 < ours["map"] < 0.9
    assert ours["map"] == pytest.approx(evaluation.stats[0], abs=1e-6)
    assert ours["ap50"] == pytest.approx(evaluation.stats[1], abs=1e-6)
    for k, c in enumerate(evaluation.params.catIds):
        precision = evaluation.eval["precision"][:, :, k, 0, -1]
        assert ours["per_class_ap"][NAMES[c]] == pytest.approx(precision[precision > -1].mean(), abs=1e-6)


def test_detection_score_perfect_empty_and_missing():
    truths, _ = toy_set()
    perfect = [{"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])), "classes": t["classes"]} for t in truths]
    score = DetectionScore(NAMES)
    score.update(perfect, truths)
    result = score.compute()
    assert result["map"] == 1.0 and result["ap50"] == 1.0
    assert result["per_class_ap"] == {"chair": 1.0, "table": 1.0, "lamp": 1.0}

    unlabeled = [{"boxes": torch.cat([t["boxes"], torch.tensor([[0., 0., 5., 5.]])]),  # class 0: not a box class
                  "classes": torch.cat([t["classes"], torch.tensor([0])])} for t in truths]
    score = DetectionScore(NAMES)
    score.update(perfect, unlabeled)
    assert score.compute() == result

    nothing = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "classes": torch.zeros(0, dtype=torch.long)}
               for _ in truths]
    score = DetectionScore(NAMES)
    score.update(nothing, truths)
    assert score.compute() == {"map": 0.0, "ap50": 0.0, "per_class_ap": {"chair": 0.0, "table": 0.0, "lamp": 0.0}}

    score = DetectionScore(NAMES)
    score.update(perfect[:1], [{"boxes": torch.zeros(0, 4), "classes": torch.zeros(0, dtype=torch.long)}])
    assert score.compute() == {"map": 0.0, "ap50": 0.0, "per_class_ap": {}}
    assert DetectionScore(NAMES).compute()["map"] == 0.0


def test_head_shapes_and_loss_with_empty_images():
    from tst.transfer.detection import LEVELS

    head = DetectionHead(dim=16, classes=4, width=16, pyramid=LEVELS)
    outputs = head(torch.randn(2, 16, 6, 8), (48, 64))  # non-square: 24x32, 12x16, 6x8, 3x4 locations
    L = 24 * 32 + 12 * 16 + 6 * 8 + 3 * 4
    assert outputs["logits"].shape == (2, L, 3) and outputs["log_ltrb"].shape == (2, L, 4)
    assert outputs["centerness"].shape == (2, L) and outputs["points"].shape == (L, 2)
    boxes = [torch.tensor([[4., 4., 20., 30.]]), torch.zeros(0, 4)]
    losses = detection_loss(outputs, boxes, [torch.tensor([3]), torch.zeros(0, dtype=torch.long)], (48, 64))
    assert set(losses) == {"total", "classification", "box", "centerness"}
    assert torch.isfinite(losses["total"]) and losses["box"] > 0
    losses["total"].backward()
    empty = detection_loss(head(torch.randn(2, 16, 6, 8), (48, 64)), [torch.zeros(0, 4)] * 2,
                           [torch.zeros(0, dtype=torch.long)] * 2, (48, 64))
    assert torch.isfinite(empty["total"]) and empty["box"] == 0
    detections = decode(outputs, (48, 64), score_threshold=0.0, max_detections=7)
    assert len(detections) == 2 and detections[0]["boxes"].shape == (7, 4)
    assert detections[0]["classes"].dtype == torch.int64 and detections[0]["classes"].min() >= 1
    assert (detections[0]["boxes"][:, 2] <= 64).all() and (detections[0]["boxes"][:, 3] <= 48).all()


def test_decode_keeps_the_best_passing_candidates_when_more_than_pre_nms_pass():
    from tst.transfer.detection import PRE_NMS

    from tst.transfer.detection import LEVELS

    head = DetectionHead(dim=16, classes=4, width=16, pyramid=LEVELS)
    with torch.no_grad():
        outputs = head(torch.randn(1, 16, 16, 16), (128, 128))  # 5440 locations x 3 classes
    outputs["logits"][0, :400] = torch.nan  # 1200 NaN scores (a diverged head's): they never pass the threshold
    threshold = 0.05
    scores = (outputs["logits"].sigmoid() * outputs["centerness"].sigmoid()[..., None]).sqrt()[0]
    assert int((scores >= threshold).sum()) > PRE_NMS
    detections = decode(outputs, (128, 128), score_threshold=threshold, max_detections=PRE_NMS)[0]
    assert torch.isfinite(detections["scores"]).all() and (detections["scores"] >= threshold).all()
    best = scores.nan_to_num(-1.0).flatten().topk(PRE_NMS).values  # the best PRE_NMS passing scores
    assert detections["scores"][0] == best[0] and (detections["scores"] >= best[-1]).all()


def synthetic_frames(count: int = 8, size: int = 64):
    """Dark frames with 1-3 non-overlapping bright rectangles: red = class 1, green = class 2."""
    generator = torch.Generator().manual_seed(0)
    colours = {1: torch.tensor([1.0, 0.2, 0.2]), 2: torch.tensor([0.2, 1.0, 0.2])}
    images, boxes, classes = torch.full((count, 3, size, size), 0.1), [], []
    for i in range(count):
        placed, labels = [], []
        while len(placed) < 1 + i % 3:
            w, h = torch.randint(10, 30, (2,), generator=generator).tolist()
            x = int(torch.randint(0, size - w, (1,), generator=generator))
            y = int(torch.randint(0, size - h, (1,), generator=generator))
            box = [x, y, x + w, y + h]
            if any(box[0] < b[2] + 2 and b[0] < box[2] + 2 and box[1] < b[3] + 2 and b[1] < box[3] + 2 for b in placed):
                continue
            label = 1 + int(torch.randint(0, 2, (1,), generator=generator))
            images[i, :, y:y + h, x:x + w] = colours[label][:, None, None]
            placed.append(box)
            labels.append(label)
        boxes.append(torch.tensor(placed, dtype=torch.float32))
        classes.append(torch.tensor(labels))
    return images, boxes, classes


def test_head_overfits_synthetic_frames():
    from tst.layers import ModelConfig
    from tst.transfer.backbones import ScratchViT

    torch.manual_seed(0)
    images, boxes, classes = synthetic_frames()
    backbone = ScratchViT(ModelConfig(dim=48, encoder_depth=2, decoder_depth=1, heads=2, patch=8, image_size=64))
    head = DetectionHead(backbone.dim, classes=3, width=16)
    optimizer = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=3e-3, weight_decay=1e-4)
    start = time.perf_counter()
    for step in range(100):
        loss = detection_loss(head(backbone(images), (64, 64)), boxes, classes, (64, 64))["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"100 steps in {time.perf_counter() - start:.1f} s, final loss {loss.item():.3f}")
    with torch.no_grad():
        predictions = decode(head(backbone(images), (64, 64)), (64, 64))
    score = DetectionScore({1: "red", 2: "green"})
    score.update(predictions, [{"boxes": b, "classes": c} for b, c in zip(boxes, classes)])
    result = score.compute()
    print(result)
    assert result["ap50"] >= 0.9


def test_pyramid_levels_follow_the_setting_and_old_runs_keep_all_four():
    # transfer.det.pyramid picks the simple pyramid's levels (finest first); a stored config without the key
    # (runs made before it) rebuilds ViTDet's four, so its model.pt still loads; a bad list is one line.
    from tst.errors import TSTError
    from tst.taxonomy import INDOOR
    from tst.transfer.detection import LEVELS, PYRAMID
    from tst.transfer.tasks import DetectionTask

    thresholds = {"score_threshold": 0.05, "iou_threshold": 0.6}
    assert DetectionTask.from_settings(INDOOR, {"det": thresholds}).pyramid == LEVELS
    task = DetectionTask.from_settings(INDOOR, {"det": {**thresholds, "pyramid": list(PYRAMID)}, "head_width": 16})
    head = task.build_head(16)
    assert len(head.scales) == len(PYRAMID) == 3
    outputs = head(torch.randn(1, 16, 6, 8), (48, 64))  # x2, x1, x0.5: 12x16, 6x8, 3x4 locations
    assert outputs["logits"].shape == (1, 12 * 16 + 6 * 8 + 3 * 4, len(INDOOR) - 1)
    assert sorted(set(outputs["strides"].tolist())) == [4.0, 8.0, 16.0]
    old = DetectionTask.from_settings(INDOOR, {"det": thresholds, "head_width": 16}).build_head(16)
    assert len(old.scales) == 4 and old.level_scale.shape == (4,)
    for bad in ([1, 2], [2, 3], [], [2, 2]):
        with pytest.raises(TSTError, match="transfer.det.pyramid"):
            DetectionTask.from_settings(INDOOR, {"det": {**thresholds, "pyramid": bad}})
