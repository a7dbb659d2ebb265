"""Adding a modality is one registry entry: a toy modality registered here is collected, read back,
drawn and pretrained on with no other change to the code."""

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from conftest import TINY_MODEL, collect_small
from tst.orchestration.cli import main
from tst.codecs import GRAY8_PNG
from tst.collect.dataset import FrameDataset
from tst.errors import TSTError
from tst.modalities import MODALITIES, Modality, Scaling, by_tier, get, register


def luminance(values: dict, settings) -> np.ndarray:
    """(H, W) uint8 luma of the rendered rgb."""
    return cv2.cvtColor(values["rgb"], cv2.COLOR_RGB2GRAY)


@pytest.fixture
def grey():
    entry = register(Modality(
        "grey", "image", 1, "uint8", "luma 0-255", "png", "sensor", GRAY8_PNG,
        to_tensors=lambda value: {"grey": torch.from_numpy(value.astype(np.float32) / 255.0)[None]},
        from_tensor=lambda x: (x[0].clamp(0, 1) * 255).numpy().astype(np.uint8),
        picture=lambda value, top=None: np.repeat(value[..., None], 3, axis=2),
        resample="bilinear", scaling=Scaling(lambda x: 2.0 * x - 1.0, lambda x: ((x + 1.0) / 2.0).clamp(0, 1)),
        loss=F.l1_loss, derive=luminance))
    yield entry
    del MODALITIES["grey"]



def test_a_modality_registered_at_run_time_is_encoded_in_this_process(grey):
    """A new process would not know it: collection encodes it on a helper thread, built-ins in a process."""
    from tst.collect.encoder import ProcessEncoder, ThreadEncoder, helper_kind
    from tst.collect.worker import Settings

    def settings(modalities):
        return Settings("out", [], modalities, "png", (100.0, 200.0), 16, 0, 0)

    assert helper_kind(settings(["rgb", "grey"])) is ThreadEncoder
    assert helper_kind(settings(["rgb", "depth", "semantic"])) is ProcessEncoder


def test_a_registered_modality_is_collected_read_and_pretrained_on(grey, tmp_path):
    assert "grey" in by_tier("sensor")
    collect_small(tmp_path, 8, 2, 2, 32, "collect.modalities=[rgb,depth,grey,semantic,instance,boxes]")
    data = tmp_path / "procedural-0" / "data"
    assert sorted(p.name for p in (data / "pretrain" / "grey").iterdir()) == ["shard-000000.tar"]
    frame = FrameDataset(data, "pretrain", ["rgb", "grey"])[0]
    rgb = (frame["rgb"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert frame["grey"].shape == (1, 32, 32)
    assert torch.equal(frame["grey"][0], torch.from_numpy(luminance({"rgb": rgb}, None) / 255.0).float())
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["outputs"]["registry"]["grey"]["unit"] == "luma 0-255"
    assert Image.open(data / "sheet-pretrain.png").width >= 5 * 32  # columns rgb, depth, grey, semantic, instance

    assert main(["pretrain", f"workspace_dir={tmp_path}", *TINY_MODEL, "pretrain.steps=2", "pretrain.input_budget=8",
                 "pretrain.target_budget=8", "pretrain.modalities=[rgb,grey]", "run_name=toy"]) == 0
    run = tmp_path / "procedural-0" / "pretrain" / "toy"
    with safe_open(str(run / "model.safetensors"), "pt") as weights:
        assert {"input_adapters.grey.weight", "output_adapters.grey.weight"} <= set(weights.keys())
    assert json.loads((run / "manifest.json").read_text())["outputs"]["modalities"] == ["rgb", "grey"]
    assert list((run / "images").glob("*.png"))  # the prediction sheet draws grey with its own picture


def test_a_taken_name_is_refused():
    with pytest.raises(TSTError, match="modality 'rgb' is already registered"):
        register(get("rgb"))
