"""The three transfer tasks behind one interface, so training, evaluation, reports and the deployed
predictor treat segmentation, detection and captioning alike.

A task names the dataset modalities it reads, builds its head on a backbone of `dim` channels, turns
(head, features, batch) into a training loss or into per-image predictions, scores predictions against
a batch's truth, and draws a few of them. For deployment it also names the tensors it adds to the
exported graph, decodes them, and fills its fields of the agent's `Prediction` (and reads them back
for online scoring), so the deploy stage never asks which task it holds.

features: (B, dim, g, g) backbone feature maps; batches are `tst.collect.dataset.collate` outputs with
rgb (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tst.errors import TSTError
from tst.taxonomy import Taxonomy
from tst.pretrain.visualize import to_uint8

from tst.transfer.heads import LinearSegmentationHead, SegmentationHead
from tst.transfer.photometric import COLOURS_KEPT
from tst.transfer.metrics import SegmentationScore
from tst.transfer.visualize import caption_panel, draw_boxes
from tst.visualize import class_palette, label_image

CAPTION_PANEL_WIDTH = 240  # pixels of a caption column in predictions.png: 40 characters a line


class Task(ABC):
    """One transfer task: everything that differs between tasks (the labels it reads, its head, loss,
    predictions, metrics, pictures and saved state) lives in its subclass, registered in TASKS."""

    name: str
    modalities: tuple[str, ...]  # read from the dataset besides rgb
    headline: str  # the metric a results table shows first

    @classmethod
    @abstractmethod
    def from_settings(cls, taxonomy: Taxonomy, settings: dict, vocabulary=None) -> Task:
        """The task as the transfer config (`settings`: head widths, thresholds, beam) asks for it."""

    @abstractmethod
    def build_head(self, dim: int) -> nn.Module: ...

    @abstractmethod
    def loss(self, head: nn.Module, features: torch.Tensor, batch: dict) -> torch.Tensor: ...

    @abstractmethod
    def predict(self, head: nn.Module, features: torch.Tensor, image_size: tuple[int, int]) -> list: ...

    @abstractmethod
    def new_score(self):
        """An accumulator with update(predictions, batch) and compute() -> {metric: value}."""

    @abstractmethod
    def columns(self) -> list[str]:
        """Titles of the pictures `draw` returns."""

    @abstractmethod
    def draw(self, batch: dict, index: int, prediction, min_score: float = 0.3) -> list[np.ndarray]:
        """(H, W, 3) uint8 pictures of frame `index`'s truth and prediction; min_score: the lowest
        confidence drawn, for tasks whose predictions carry one."""

    def state(self) -> dict:
        """What a saved model needs besides its weights to rebuild this task (JSON)."""
        return {}

    # --- deployment ------------------------------------------------------------------------------
    def compile_for_deploy(self, head: nn.Module, mode: str | None) -> nn.Module:
        """The head as deploy.compile=true runs it (torch.compile `mode`; None: the default)."""
        return torch.compile(head, mode=mode)

    @abstractmethod
    def export_outputs(self, head: nn.Module, features: torch.Tensor, image_size: tuple[int, int]) -> dict:
        """name -> tensor this task adds to the exported dense graph (fixed shapes, traceable)."""

    @abstractmethod
    def from_exported(self, head, outputs: dict[str, torch.Tensor], image_size: tuple[int, int]) -> list:
        """The dense graph's outputs (name -> tensor over a batch) -> what `predict` returns. head: the
        task's head or a stand-in running its exported graph (captions decode through it)."""

    @abstractmethod
    def prediction_fields(self, prediction) -> dict:
        """One image's prediction -> the fields of the deploy `Prediction` it fills (numpy arrays, str)."""

    @abstractmethod
    def scored(self, predictions: list):
        """Deploy Predictions (objects carrying this task's fields) -> predictions in the layout
        `new_score().update` takes."""


class SegmentationTask(Task):
    """Per-pixel classes; cross-entropy with class 0 (unlabeled) ignored; mIoU over the split.
    head: "pyramid" (SegmentationHead, `width` channels) or "linear" (LinearSegmentationHead)."""

    name, modalities, headline = "seg", ("semantic",), "seg_miou"
    HEADS = ("pyramid", "linear")

    def __init__(self, taxonomy: Taxonomy, width: int = 64, head: str = "pyramid"):
        if head not in self.HEADS:
            raise TSTError(f"transfer.seg_head: expected one of {', '.join(self.HEADS)}, got {head!r}")
        self.taxonomy, self.width, self.head = taxonomy, width, head

    @classmethod
    def from_settings(cls, taxonomy, settings, vocabulary=None):
        return cls(taxonomy, int(settings.get("head_width", 64)), str(settings.get("seg_head", "pyramid")))

    def build_head(self, dim: int) -> nn.Module:
        if self.head == "linear":
            return LinearSegmentationHead(dim, len(self.taxonomy))
        return SegmentationHead(dim, len(self.taxonomy), self.width)

    def loss(self, head, features, batch):
        return F.cross_entropy(head(features, batch["rgb"].shape[-2:]), batch["semantic"], ignore_index=0)

    def predict(self, head, features, image_size):
        """-> (B, H, W) int64 class ids."""
        return head(features, image_size).argmax(1)

    def new_score(self):
        return _SegmentationMetrics(self.taxonomy)

    def columns(self):
        return ["truth", "segmentation"]

    def draw(self, batch, index, prediction, min_score=0.3):
        palette = class_palette(self.taxonomy.names)
        return [label_image(batch["semantic"][index].numpy(), palette=palette),
                label_image(prediction.cpu().numpy(), palette=palette)]

    def export_outputs(self, head, features, image_size):
        """seg_logits_nhwc: (B, H, W, classes). Channels last, so the argmax after the graph reduces
        over contiguous memory: tiny@128's 39 classes, graph and argmax 1.7 ms against 3.9 ms for the
        (B, classes, H, W) layout (ONNX Runtime, 2 cores; an argmax inside the graph took 2.7 ms)."""
        return {"seg_logits_nhwc": head(features, image_size).permute(0, 2, 3, 1)}

    def from_exported(self, head, outputs, image_size):
        # max's indices are argmax's (the first of equal maxima in both), and torch reduces to them faster
        # over a short last dimension: 1.6 against 2.6 ms at tiny@224's (1, 224, 224, 31) on 2 cores.
        return outputs["seg_logits_nhwc"].max(-1).indices

    def prediction_fields(self, prediction):
        """semantic: (H, W) int64 class ids."""
        return {"semantic": prediction.cpu().numpy()}

    def scored(self, predictions):
        return torch.stack([torch.from_numpy(p.semantic) for p in predictions])


class _SegmentationMetrics:
    def __init__(self, taxonomy: Taxonomy):
        self.taxonomy, self.score = taxonomy, SegmentationScore(len(taxonomy))

    def update(self, predictions: torch.Tensor, batch: dict) -> None:
        self.score.update(predictions, batch["semantic"])

    def compute(self) -> dict:
        result = self.score.compute()
        return {"seg_miou": result["miou"],
                "seg_per_class_iou": {self.taxonomy.name(c): v for c, v in result["per_class"].items()}}


class DetectionTask(Task):
    """Boxes of thing instances: anchor-free head on a simple feature pyramid; COCO mAP and AP50."""

    name, modalities, headline = "det", ("boxes",), "det_map"

    def __init__(self, taxonomy: Taxonomy, score_threshold: float = 0.05, iou_threshold: float = 0.6,
                 width: int = 64, pyramid: tuple[float, ...] | None = None):
        from tst.transfer.detection import PYRAMID

        self.taxonomy, self.score_threshold, self.iou_threshold = taxonomy, score_threshold, iou_threshold
        self.width, self.pyramid = width, PYRAMID if pyramid is None else tuple(pyramid)

    @classmethod
    def from_settings(cls, taxonomy, settings, vocabulary=None):
        from tst.transfer.detection import LEVELS, pyramid_levels

        det = settings["det"]
        try:  # runs made before transfer.det.pyramid existed have all four levels
            pyramid = pyramid_levels(LEVELS if det.get("pyramid") is None else det["pyramid"])
        except ValueError as error:
            raise TSTError(f"transfer.det.pyramid: {error}") from None
        return cls(taxonomy, float(det["score_threshold"]), float(det["iou_threshold"]), int(settings.get("head_width", 64)),
                   pyramid)

    def build_head(self, dim: int) -> nn.Module:
        from tst.transfer.detection import DetectionHead

        return DetectionHead(dim, len(self.taxonomy), self.width, self.pyramid)

    def loss(self, head, features, batch):
        from tst.transfer.detection import detection_loss

        size = tuple(batch["rgb"].shape[-2:])
        return detection_loss(head(features, size), batch["boxes"], batch["box_classes"], size)["total"]

    def predict(self, head, features, image_size):
        """-> one dict per image: boxes (K, 4) pixels, scores (K,), classes (K,) int64."""
        from tst.transfer.detection import decode

        return decode(head(features, tuple(image_size)), tuple(image_size), self.score_threshold, self.iou_threshold)

    def new_score(self):
        return _DetectionMetrics(self.taxonomy)

    def columns(self):
        return ["truth boxes", "detections"]

    def draw(self, batch, index, prediction, min_score=0.3):
        rgb = to_uint8("rgb", batch["rgb"][index])
        confident = prediction["scores"] >= min_score
        return [draw_boxes(rgb, batch["boxes"][index], batch["box_classes"][index], self.taxonomy),
                draw_boxes(rgb, prediction["boxes"][confident], prediction["classes"][confident], self.taxonomy,
                           prediction["scores"][confident])]

    # The head's raw outputs the dense graph carries; box decoding and NMS run on them after the graph.
    RAW_KEYS = ("logits", "log_ltrb", "centerness", "points", "strides", "limits")

    def export_outputs(self, head, features, image_size):
        raw = head(features, image_size)
        return {f"det_{key}": raw[key] for key in self.RAW_KEYS}

    def from_exported(self, head, outputs, image_size):
        from tst.transfer.detection import decode

        raw = {key: outputs[f"det_{key}"] for key in self.RAW_KEYS}
        return decode(raw, tuple(image_size), self.score_threshold, self.iou_threshold)

    def prediction_fields(self, prediction):
        """boxes (K, 4) float32 pixels x0, y0, x1, y1; scores (K,) float32; classes (K,) int64."""
        return {"boxes": prediction["boxes"].float().cpu().numpy(), "scores": prediction["scores"].float().cpu().numpy(),
                "classes": prediction["classes"].cpu().numpy()}

    def scored(self, predictions):
        return [{"boxes": torch.from_numpy(p.boxes), "scores": torch.from_numpy(p.scores),
                 "classes": torch.from_numpy(p.classes)} for p in predictions]


class _DetectionMetrics:
    def __init__(self, taxonomy: Taxonomy):
        from tst.transfer.coco import DetectionScore

        self.score = DetectionScore({c: taxonomy.name(c) for c in range(1, len(taxonomy))})

    def update(self, predictions: list[dict], batch: dict) -> None:
        truths = [{"boxes": b, "classes": c} for b, c in zip(batch["boxes"], batch["box_classes"])]
        self.score.update([{k: v.cpu() for k, v in p.items()} for p in predictions], truths)

    def compute(self) -> dict:
        result = self.score.compute()
        return {"det_map": result["map"], "det_ap50": result["ap50"], "det_per_class_ap": result["per_class_ap"]}


class CaptionTask(Task):
    """A sentence per frame: causal decoder over the backbone tokens; BLEU-4, ROUGE-L and CIDEr-D."""

    name, modalities, headline = "caption", ("caption",), "caption_cider_d"

    def __init__(self, vocabulary, beam: int = 1, max_length: int = 40, meteor: bool = False, width: int = 128):
        self.vocabulary, self.beam, self.max_length, self.meteor = vocabulary, beam, max_length, meteor
        self.width = width

    @classmethod
    def from_settings(cls, taxonomy, settings, vocabulary=None):
        caption = settings["caption"]
        return cls(vocabulary, int(caption["beam"]), int(caption["max_words"]) + 2, bool(caption["meteor"]),
                   int(caption["width"]))

    def build_head(self, dim: int) -> nn.Module:
        from tst.transfer.captioning import CaptionDecoder

        return CaptionDecoder(dim, len(self.vocabulary), width=self.width, max_length=self.max_length)

    def loss(self, head, features, batch):
        from tst.transfer.captioning import caption_loss

        captions = batch["caption"]
        if COLOURS_KEPT in batch:  # a frame whose colours were jittered no longer matches its caption
            kept = batch[COLOURS_KEPT].to(torch.bool)
            if not kept.any():
                return features.sum() * 0.0
            features, captions = features[kept.to(features.device)], [c for c, k in zip(captions, kept) if k]
        tokens = self.tokens(captions).to(features.device)
        return caption_loss(head(features, tokens), tokens)  # caption_loss shifts by one itself

    def tokens(self, captions: list[str]) -> torch.Tensor:
        """(B, L) int64 <bos> words <eos>, padded with 0."""
        encoded = [self.vocabulary.encode(c, self.max_length) for c in captions]
        out = torch.zeros(len(encoded), max(len(e) for e in encoded), dtype=torch.long)
        for row, ids in enumerate(encoded):
            out[row, :len(ids)] = torch.tensor(ids)
        return out

    def predict(self, head, features, image_size):
        """-> one caption (str) per image."""
        from tst.transfer.captioning import generate

        return generate(head, features, self.vocabulary, beam=self.beam, max_length=self.max_length)

    def new_score(self):
        from tst.transfer.caption_metrics import CaptionScore

        return _CaptionMetrics(CaptionScore(meteor=self.meteor))

    def columns(self):
        return ["truth caption", "predicted caption"]

    def draw(self, batch, index, prediction, min_score=0.3):
        height = batch["rgb"].shape[-2]
        width = CAPTION_PANEL_WIDTH  # wider than a frame: a caption of 30 words fits at 64 px high
        shown = prediction if prediction is not None else "(no caption yet)"  # a walk's first steps, captions in the background
        return [caption_panel(batch["caption"][index], width, height), caption_panel(shown, width, height)]

    def state(self) -> dict:
        return {"vocabulary": self.vocabulary.to_dict(), "beam": self.beam, "max_length": self.max_length}

    def compile_for_deploy(self, head, mode):
        """Beam search is Python control flow around the decoder, so only its one-position step is
        compiled (static shapes: fixed-size caches). On 2 CPU cores a tiny decoder's step took 0.32 ms
        compiled against 0.51 ms eager."""
        head.step = torch.compile(head.step, mode=mode, dynamic=False)
        return head

    def export_outputs(self, head, features, image_size):
        """The decoder's cross-attention keys and values (its own graph runs the decoding steps)."""
        return {"caption_cross": head.cross_cache(head.memory(features))}

    def from_exported(self, head, outputs, image_size):
        from tst.transfer.captioning import generate

        return generate(head, outputs["caption_cross"], self.vocabulary, beam=self.beam, max_length=self.max_length)

    def prediction_fields(self, prediction):
        return {"caption": prediction}

    def scored(self, predictions):
        return [p.caption for p in predictions]


class _CaptionMetrics:
    def __init__(self, score):
        self.score = score

    def update(self, predictions: list[str], batch: dict) -> None:
        self.score.update(predictions, [[c] for c in batch["caption"]])

    def compute(self) -> dict:
        return {f"caption_{k}": v for k, v in self.score.compute().items()}


TASKS: dict[str, type[Task]] = {task.name: task for task in (SegmentationTask, DetectionTask, CaptionTask)}


def register_task(task: type[Task]) -> type[Task]:
    """Add a task class to TASKS (usable as a class decorator); a taken name is a TSTError."""
    if task.name in TASKS:
        raise TSTError(f"task '{task.name}' is already registered")
    TASKS[task.name] = task
    return task
