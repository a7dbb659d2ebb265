"""Adding a task is one class: a toy task registered here (each frame's mean depth, regressed from the
backbone's features) is trained and scored by `tst transfer`, drawn in its predictions sheet, exported
into the deploy graphs, and filled in and scored by the deployed predictor, with no other change."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TINY_MODEL, collect_small
from tst.orchestration.cli import main
from tst.errors import TSTError
from tst.transfer.tasks import TASKS, SegmentationTask, Task, register_task
from tst.transfer.visualize import caption_panel


class MeanDepthHead(nn.Module):
    """(B, dim, g, g) features -> (B,) metres."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.mean(dim=(2, 3)))[:, 0]


class MeanAbsoluteError:
    def __init__(self):
        self.errors: list[float] = []

    def update(self, predictions: torch.Tensor, batch: dict) -> None:
        self.errors += (predictions.cpu() - batch["depth"].mean(dim=(1, 2, 3))).abs().tolist()

    def compute(self) -> dict:
        return {"mean_depth_mae": float(np.mean(self.errors))}


class MeanDepthTask(Task):
    name, modalities, headline = "mean_depth", ("depth",), "mean_depth_mae"

    @classmethod
    def from_settings(cls, taxonomy, settings, vocabulary=None):
        return cls()

    def build_head(self, dim):
        return MeanDepthHead(dim)

    def loss(self, head, features, batch):
        return F.l1_loss(head(features), batch["depth"].mean(dim=(1, 2, 3)))

    def predict(self, head, features, image_size):
        return head(features)

    def new_score(self):
        return MeanAbsoluteError()

    def columns(self):
        return ["mean depth"]

    def draw(self, batch, index, prediction, min_score=0.3):
        truth = float(batch["depth"][index].mean())
        return [caption_panel(f"truth {truth:.2f} m, predicted {float(prediction):.2f} m", 120,
                              batch["rgb"].shape[-2])]

    def export_outputs(self, head, features, image_size):
        return {"mean_depth": head(features)}

    def from_exported(self, head, outputs, image_size):
        return outputs["mean_depth"]

    def prediction_fields(self, prediction):
        return {"mean_depth": float(prediction)}

    def scored(self, predictions):
        return torch.tensor([p.mean_depth for p in predictions])


@pytest.fixture
def mean_depth():
    yield register_task(MeanDepthTask)
    del TASKS["mean_depth"]


def test_a_registered_task_is_trained_exported_and_deployed(mean_depth, tmp_path):
    from tst.deploy.export import OnnxGraphs, export
    from tst.deploy.loop import OnlineScores
    from tst.deploy.predictor import Predictor
    from tst.transfer.checkpoint import load_transfer

    collect_small(tmp_path, 4, 4, 4, 32)
    assert main(["transfer", f"workspace_dir={tmp_path}", *TINY_MODEL, "transfer.task=[seg,mean_depth]",
                 "transfer.steps=2", "run_name=toy"]) == 0
    run = tmp_path / "procedural-0" / "transfer" / "toy"
    metrics = __import__("json").loads((run / "metrics.json").read_text())
    assert metrics["tasks"] == ["seg", "mean_depth"] and metrics["mean_depth_mae"] > 0

    model = load_transfer(run, ("mean_depth",))
    assert set(model.module.tasks) == {"seg", "mean_depth"}
    frames = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    export(model.module, model.image_size, frames, tmp_path / "export", run)
    rgb = (frames[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    eager = Predictor(model)(rgb)
    exported = Predictor(model, runtime="onnx", export_dir=tmp_path / "export")(rgb)
    assert eager.semantic.shape == (32, 32) and eager.boxes is None
    assert abs(eager.mean_depth - exported.mean_depth) < 1e-4
    assert OnnxGraphs(tmp_path / "export", model.module, run).names[-1] == "mean_depth"

    observation = type("Observation", (), {"rgb": rgb, "depth": np.full((32, 32), 2.0, np.float32),
                                           "semantic": np.zeros((32, 32), np.int64), "boxes": np.zeros((0, 4), np.float32),
                                           "box_classes": np.zeros(0, np.int64), "caption": "", "step": 0})()
    scores = OnlineScores(Predictor(model))
    scores.update(observation, eager)
    assert scores.compute()["mean_depth_mae"] == pytest.approx(abs(eager.mean_depth - 2.0), abs=1e-5)


def test_a_taken_task_name_is_refused():
    with pytest.raises(TSTError, match="task 'seg' is already registered"):
        register_task(SegmentationTask)


def test_an_unregistered_task_is_named():
    with pytest.raises(TSTError, match="transfer.task: 'mean_depth' is not a task"):
        from tst.transfer.run import task_names

        task_names(["mean_depth"])
