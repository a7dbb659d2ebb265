"""COCO box metrics without files: our truths and detections as in-memory COCO dicts, scored by
faster-coco-eval (the C++ reimplementation of pycocotools' COCOeval, same numbers).

Boxes are x0, y0, x1, y1 pixels (x1, y1 exclusive) here and [x, y, width, height] in COCO.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import numpy as np
import torch


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).cpu()
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()


def to_coco(truths: list[dict], predictions: list[dict], class_names: dict[int, str]) -> tuple[dict, list[dict]]:
    """truths: per image dict(boxes (N, 4) pixels, classes (N,)); predictions: per image dict(boxes (K, 4),
    scores (K,), classes (K,)) as `detection.decode` returns them, in the same image order;
    class_names: class id -> name. Id 0 (unlabeled) is never a category: its truth boxes are dropped.
    -> (COCO ground truth: images (id 1..), annotations (bbox [x, y, w, h], area, iscrowd 0, id 1..),
        categories; detections: image_id, category_id, bbox, score)."""
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} truths but {len(predictions)} predictions")
    images, annotations, detections = [], [], []
    for image_id, (truth, prediction) in enumerate(zip(truths, predictions), start=1):
        images.append({"id": image_id})
        for bbox, cls in zip(_xywh(truth["boxes"]), torch.as_tensor(truth["classes"]).reshape(-1).tolist()):
            if cls == 0:  # unlabeled: not a box class
                continue
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls),
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
        scores = torch.as_tensor(prediction["scores"]).reshape(-1).tolist()
        classes = torch.as_tensor(prediction["classes"]).reshape(-1).tolist()
        for bbox, cls, score in zip(_xywh(prediction["boxes"]), classes, scores):
            detections.append({"image_id": image_id, "category_id": int(cls), "bbox": bbox, "score": float(score)})
    categories = [{"id": int(c), "name": name} for c, name in sorted(class_names.items()) if c != 0]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def _quiet(*args, **kwargs) -> None:
    pass


@contextlib.contextmanager
def _quiet_logs():
    """faster-coco-eval also reports progress through its loggers (debug and info level): mute them."""
    logger = logging.getLogger("faster_coco_eval")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class DetectionScore:
    """COCO box AP over a whole eval split: predictions and truths accumulate across batches, then one
    COCOeval (faster-coco-eval) scores them. map: AP@[.5:.95]; ap50: AP@.5; per_class_ap: AP@[.5:.95]
    by class name, for the classes with at least one truth box (the same classes map averages)."""

    def __init__(self, class_names: dict[int, str]):
        self.class_names = dict(class_names)
        self.truths: list[dict] = []
        self.predictions: list[dict] = []

    def update(self, predictions: list[dict], truths: list[dict]) -> None:
        """predictions: per image dict(boxes (K, 4), scores (K,), classes (K,)); truths: per image
        dict(boxes (N, 4), classes (N,)); boxes x0, y0, x1, y1 pixels."""
        if len(predictions) != len(truths):
            raise ValueError(f"{len(predictions)} predictions but {len(truths)} truths")
        # Copies: a view would keep alive the whole buffer it was cut from (an agent loop scores thousands
        # of frames, each message's arrays one buffer).
        self.predictions += [{k: torch.as_tensor(p[k]).detach().cpu().clone() for k in ("boxes", "scores", "classes")}
                             for p in predictions]
        self.truths += [{k: torch.as_tensor(t[k]).detach().cpu().clone() for k in ("boxes", "classes")} for t in truths]

    def compute(self) -> dict:
        from faster_coco_eval import COCO, COCOeval_faster

        ground_truth, detections = to_coco(self.truths, self.predictions, self.class_names)
        present = sorted({a["category_id"] for a in ground_truth["annotations"]})
        if not present:
            return {"map": 0.0, "ap50": 0.0, "per_class_ap": {}}
        names = {c: self.class_names.get(c, str(c)) for c in present}
        if not detections:
            return {"map": 0.0, "ap50": 0.0, "per_class_ap": {names[c]: 0.0 for c in present}}
        known = {c["id"] for c in ground_truth["categories"]}
        ground_truth["categories"] += [{"id": c, "name": names[c]} for c in present if c not in known]

        with _quiet_logs():
            truth = COCO(ground_truth, print_function=_quiet)
            found = truth.loadRes(copy.deepcopy(detections))  # loadRes writes into the dicts it is given
            evaluation = COCOeval_faster(truth, found, iouType="bbox", print_function=_quiet)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        # precision: (IoU thresholds, recall points, categories, area ranges, max detections); -1 = no truth
        precision = np.asarray(evaluation.eval["precision"])[:, :, :, 0, -1]
        per_class = {}
        for k, c in enumerate(evaluation.params.catIds):
            values = precision[:, :, k]
            if c in names:
                per_class[names[c]] = float(values[values > -1].mean()) if (values > -1).any() else 0.0
        return {"map": max(float(evaluation.stats[0]), 0.0), "ap50": max(float(evaluation.stats[1]), 0.0),
                "per_class_ap": per_class}
