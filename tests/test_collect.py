"""The collect stage: splits, derived modalities, storage, readers, resume and bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from torch.utils.data import DataLoader

from tst.orchestration.cli import main
from tst.codecs import decode_depth, encode_depth
from tst.collect.dataset import FrameDataset, RandomResizedCropFlip, ShardStream, collate
from tst.collect.derive import instance_boxes
from tst.config import expand_sweeps
from tst.errors import TSTError
from tst.taxonomy import INDOOR

SMALL = ["collect.frames.pretrain=24", "collect.frames.eval=12", "collect.frames.transfer=12",
         "collect.transfer_spaces=[1]", "collect.size=48", "collect.shard_size=8", "collect.workers=1",
         "collect.sheet_samples=2", "tracking.enabled=false"]


def collect(tmp: Path, *extra: str) -> int:
    return main(["collect", f"workspace_dir={tmp}", *SMALL, *extra])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("collect")
    assert collect(tmp) == 0
    return tmp / "procedural-0" / "data"


def test_dataset_layout_and_manifest(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["stage"] == "collect"
    outputs = manifest["outputs"]
    assert {s: outputs["splits"][s]["frames"] for s in outputs["splits"]} == {"pretrain": 24, "eval": 12, "transfer": 12}
    assert outputs["spaces"] == ["procedural-0", "procedural-1"]
    assert outputs["registry"]["depth"]["unit"].startswith("metres")
    assert len(outputs["splits"]["pretrain"]["shards"]) == 3
    for modality in outputs["modalities"]:
        assert (dataset / "pretrain" / modality / "shard-000000.tar").is_file()
    for image in ("sheet-pretrain.png", "sheet-eval.png", "sheet-transfer.png", "floorplan.png"):
        assert (dataset / image).stat().st_size > 1000
    assert not list(dataset.rglob(".*tmp*"))  # no temporary files left


def test_splits_are_disjoint_and_the_reported_minimum_is_true(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    positions = {}
    for split in ("pretrain", "eval", "transfer"):
        data = FrameDataset(dataset, split, ["depth"])
        positions[split] = np.array([data[i]["camera"]["pose"][:3, 3].numpy() for i in range(len(data))])
        spaces = {data[i]["camera"]["space"] for i in range(len(data))}
        assert spaces == ({"procedural-1"} if split == "transfer" else {"procedural-0"})
    distance = cKDTree(positions["pretrain"]).query(positions["eval"])[0].min()
    assert distance >= 1.0 - 1e-6  # collect.eval_min_distance
    assert abs(distance - manifest["outputs"]["eval_min_distance"]) < 1e-4


def test_walks_are_agent_steps(dataset):
    data = FrameDataset(dataset, "pretrain", ["depth"])
    cameras = [data[i]["camera"] for i in range(len(data))]
    walked = [c for c in cameras if c["path_id"] >= 0]
    assert walked, "the default mix has agent walks"
    for previous, current in zip(walked, walked[1:]):
        if current["path_id"] == previous["path_id"]:
            step = np.linalg.norm(current["pose"][:3, 3].numpy() - previous["pose"][:3, 3].numpy())
            yaw_a, yaw_b = (np.arctan2(c["pose"][1, 2].item(), c["pose"][0, 2].item()) for c in (previous, current))
            turn = abs(np.degrees((yaw_b - yaw_a + np.pi) % (2 * np.pi) - np.pi))
            moved, turned = abs(step - 0.25) < 1e-4, abs(turn - 10) < 0.1
            assert moved != turned, (step, turn)  # each frame is exactly one action


def test_boxes_match_masks(dataset):
    data = FrameDataset(dataset, "eval", ["semantic", "instance", "boxes"])
    seen = 0
    for i in range(len(data)):
        sample = data[i]
        instance = sample["instance"].numpy()
        for box, class_id, instance_id in zip(sample["boxes"], sample["box_classes"], sample["box_instances"]):
            mask = instance == int(instance_id)
            rows, cols = np.nonzero(mask)
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert INDOOR.is_thing(int(class_id))
            seen += 1
    assert seen > 0


def test_instance_boxes_on_a_synthetic_map():
    semantic = np.zeros((10, 12), np.uint16)
    instance = np.zeros((10, 12), np.uint16)
    chair, wall = INDOOR.id("chair"), INDOOR.id("wall")
    semantic[2:5, 3:7], instance[2:5, 3:7] = chair, 4
    semantic[0:10, 10:12], instance[0:10, 10:12] = wall, 9  # stuff: no box
    semantic[8, 0], instance[8, 0] = chair, 5  # 1 pixel: below min_pixels
    boxes = instance_boxes(semantic, instance, INDOOR, min_pixels=2)
    assert boxes == [(chair, 4, 3, 2, 7, 5, 12)]


def caption_classes(caption: str) -> set[str]:
    """Taxonomy thing names a caption mentions (longest names first, so 'chair' in 'armchair' is not
    counted twice)."""
    from tst.collect.captions import plural

    text, found = " " + caption.lower() + " ", set()
    for name in sorted((INDOOR.name(i) for i in INDOOR.thing_ids), key=len, reverse=True):
        pattern = rf"(?<![a-z]){re.escape(name)}(s|es)?(?![a-z])|(?<![a-z]){re.escape(plural(name))}(?![a-z])"
        if re.search(pattern, text):
            found.add(name)
            text = re.sub(pattern, " ", text)
    return found


def test_captions_mention_only_visible_objects(dataset):
    captions = set()
    for split in ("pretrain", "eval", "transfer"):
        data = FrameDataset(dataset, split, ["boxes", "caption"])
        for i in range(len(data)):
            sample = data[i]
            visible = {INDOOR.name(int(c)) for c in sample["box_classes"]}
            assert caption_classes(sample["caption"]) <= visible, (sample["caption"], visible)
            captions.add(sample["caption"])
    assert len(captions) > 30  # varied, not one template


def test_depth_round_trips_within_a_millimetre(dataset):
    depth = np.random.default_rng(0).uniform(0.1, 20.0, (16, 16)).astype(np.float32)
    depth[0, 0] = 0.0
    assert np.abs(decode_depth(encode_depth(depth)) - depth).max() <= 0.0005 + 1e-6
    from tst.camera import Camera
    from tst.envs.procedural.apartment import ProceduralSpace

    data = FrameDataset(dataset, "eval", ["depth"])
    sample = data[3]
    camera = Camera(sample["camera"]["K"].double().numpy(), 48, 48, sample["camera"]["pose"].double().numpy())
    rendered = ProceduralSpace(0).render(camera, ("depth",))["depth"]
    assert np.abs(sample["depth"][0].numpy() - rendered).max() <= 0.001


def test_two_dataloader_workers_yield_every_sample_once(dataset):
    stream = ShardStream(dataset, "pretrain", ["rgb", "depth"])
    keys = [k for batch in DataLoader(stream, batch_size=5, num_workers=2, collate_fn=collate) for k in batch["key"]]
    assert len(keys) == 24 and len(set(keys)) == 24
    batch = next(iter(DataLoader(stream, batch_size=4, collate_fn=collate)))
    assert batch["rgb"].shape == (4, 3, 48, 48) and batch["rgb"].dtype == torch.float32
    assert batch["depth"].shape == (4, 1, 48, 48) and batch["depth"].max() < 30


def test_shards_are_split_across_ranks(dataset, monkeypatch):
    stream = ShardStream(dataset, "pretrain", ["depth"])
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        seen.append({s["key"] for s in stream})
    assert seen[0].isdisjoint(seen[1]) and len(seen[0] | seen[1]) == 24


def test_augmentation_keeps_modalities_aligned(dataset):
    sample = FrameDataset(dataset, "eval")[5]
    crop = RandomResizedCropFlip(32, scale=(0.6, 0.6), flip=1.0)
    out = crop(sample, torch.Generator().manual_seed(1))
    assert out["rgb"].shape == (3, 32, 32) and out["semantic"].shape == (32, 32)
    assert set(out["semantic"].unique().tolist()) <= set(sample["semantic"].unique().tolist())  # nearest
    for box, instance_id in zip(out["boxes"], out["box_instances"]):
        rows, cols = np.nonzero(out["instance"].numpy() == int(instance_id))
        if len(rows):  # the transformed box still encloses the (nearest-resampled) mask
            assert box[0] <= cols.min() + 1 and box[2] >= cols.max() and box[1] <= rows.min() + 1 and box[3] >= rows.max()
    # A full-image crop with a flip mirrors the normals: x changes sign.
    full = RandomResizedCropFlip(48, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=1.0)(sample)
    assert torch.allclose(full["normals"][0], -sample["normals"][0].flip(-1), atol=1e-5)
    assert torch.allclose(full["normals"][1:], sample["normals"][1:].flip(-1), atol=1e-5)


def test_corrupt_shard_is_named_or_skipped(dataset, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    shard = copy / "pretrain" / "rgb" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(TSTError, match="shard-000001.tar: corrupt or truncated"):
        list(ShardStream(copy, "pretrain", ["rgb"]))
    with pytest.warns(UserWarning, match="skipping"):
        keys = [s["key"] for s in ShardStream(copy, "pretrain", ["rgb"], skip_corrupt=True)]
    assert len(keys) == 16


def test_rerun_is_a_no_op_and_a_different_config_is_refused(dataset, capsys):
    tmp = dataset.parent.parent
    before = {p: p.stat().st_mtime_ns for p in (dataset / "pretrain").rglob("*.tar")}
    assert collect(tmp) == 0
    assert before == {p: p.stat().st_mtime_ns for p in (dataset / "pretrain").rglob("*.tar")}
    capsys.readouterr()
    assert collect(tmp, "collect.edges.low=50") != 0
    err = capsys.readouterr().err
    assert "different config" in err and "collect.overwrite=true" in err


def _shards(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tar"))}


def _kill_after_first_shard(command: list[str], out: Path) -> None:
    """Start `tst collect` (command) and SIGKILL it once its first pretrain shard is on disk in `out`."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "pretrain" / "camera").glob("shard-*.tar"))) < 1:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_killed_collection_resumes_to_the_uninterrupted_result(tmp_path, dataset):
    command = [sys.executable, "-m", "tst.orchestration.cli", "collect", f"workspace_dir={tmp_path}", *SMALL,
               "collect.splits=[pretrain,eval]"]
    out = tmp_path / "procedural-0" / "data"
    _kill_after_first_shard(command, out)
    assert not (out / "manifest.json").exists()
    assert subprocess.run(command, capture_output=True).returncode == 0
    resumed = _shards(out)
    uninterrupted = {k: v for k, v in _shards(dataset).items() if not k.startswith("transfer")}
    assert resumed.keys() == uninterrupted.keys()
    assert all(resumed[k] == uninterrupted[k] for k in resumed)
    assert not list(out.rglob(".*tmp*"))


def test_pool_workers_die_with_a_killed_collection(tmp_path):
    """SIGKILL of `tst collect` with two workers: nothing is written after it, and a re-run completes."""
    command = [sys.executable, "-m", "tst.orchestration.cli", "collect", f"workspace_dir={tmp_path}", *SMALL,
               "collect.workers=2", "collect.splits=[pretrain]", "collect.frames.pretrain=64", "collect.size=96"]
    out = tmp_path / "procedural-0" / "data"
    _kill_after_first_shard(command, out)
    written = sorted(out.rglob("*"))
    time.sleep(3.0)  # orphaned workers would still be rendering and renaming shards now
    assert sorted(out.rglob("*")) == written
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert (out / "manifest.json").is_file() and not list(out.rglob(".*tmp*"))



def test_interrupted_one_worker_collection_stops_its_encoding_process_and_resumes(tmp_path):
    """Ctrl-C of `tst collect` with one worker (which encodes in a helper process, a core being spare):
    it exits at once with 130, its helper goes with it, and a re-run completes the dataset."""
    command = [sys.executable, "-m", "tst.orchestration.cli", "collect", f"workspace_dir={tmp_path}", *SMALL,
               "collect.splits=[pretrain]", "collect.frames.pretrain=400", "collect.size=96"]
    out = tmp_path / "procedural-0" / "data"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "pretrain" / "camera").glob("shard-*.tar")):
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    helpers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130 and "interrupted" in process.stderr.read()
    if (os.cpu_count() or 1) > 1:
        assert helpers, "one worker with a spare core encodes in a helper process"
    time.sleep(0.5)
    assert not [pid for pid in helpers if Path(f"/proc/{pid}").exists()]
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert (out / "manifest.json").is_file() and not list(out.rglob(".*tmp*"))


def test_multirun_overrides_expand():
    assert expand_sweeps(["space.seed=0,1,2", "collect.size=64"]) == [
        ["space.seed=0", "collect.size=64"], ["space.seed=1", "collect.size=64"], ["space.seed=2", "collect.size=64"]]


BAD = [
    (["collect.modalities=[rgb,heat]"], "unknown modality 'heat'"),
    (["collect.frames.pretrain=-3"], "collect.frames.pretrain: expected a non-negative integer"),
    (["collect.frames.pretrain=0", "collect.frames.eval=0", "collect.frames.transfer=0"], "every requested split has 0"),
    (["collect.views.height_range=[40,41]", "collect.mix.eval.walks=0"], "free positions"),
    (["collect.transfer_spaces=[0]"], "is the test space itself"),
    (["collect.splits=[train]"], "unknown split"),
]


@pytest.mark.parametrize("extra, message", BAD)
def test_bad_input(extra, message, tmp_path, capsys):
    code = collect(tmp_path, *extra)
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code != 0 and len(err) == 1 and message in err[0], err
    assert not list((tmp_path).rglob("*.tar")) and not list(tmp_path.rglob("manifest.json"))


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = collect(tmp_path, f"data_dir={blocker / 'data'}")
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code != 0 and len(err) == 1 and f"data_dir: {blocker / 'data'}: {blocker} is a file" in err[0]
    assert not (tmp_path / "procedural-0").exists()  # refused before planning or rendering


@pytest.mark.skipif(__import__("importlib").util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_executor_matches_local(tmp_path, dataset):
    assert collect(tmp_path, "collect.executor=ray", "collect.workers=2", "collect.splits=[eval]") == 0
    ours = _shards(tmp_path / "procedural-0" / "data")
    assert ours == {k: v for k, v in _shards(dataset).items() if k.startswith("eval")}


def test_shards_are_webdataset_shards(dataset):
    webdataset = pytest.importorskip("webdataset")
    shard = dataset / "eval" / "depth" / "shard-000000.tar"
    samples = list(webdataset.WebDataset(str(shard), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"eval_{i:07d}" for i in range(8)]
    assert np.abs(decode_depth(samples[0]["png"]) - FrameDataset(dataset, "eval", ["depth"])[0]["depth"][0].numpy()).max() == 0


def test_a_flipped_frame_gets_the_mirrored_caption(dataset):
    from tst.collect.captions import mirrored
    from tst.transfer.data import training_view

    assert mirrored("To the right of the bed there is the lamp. Left: a sofa. Bright, leftover.") == \
        "To the left of the bed there is the lamp. Right: a sofa. Bright, leftover."
    sample = FrameDataset(dataset, "eval", ["rgb", "caption"])[3]
    sample["caption"] = "The sofa is to the left of the lamp."
    flipped = RandomResizedCropFlip(48, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=1.0)(sample)
    assert flipped["caption"] == "The sofa is to the right of the lamp."
    assert RandomResizedCropFlip(48, flip=0.0)(sample)["caption"] == sample["caption"]
    # With captions, transfer trains on whole frames (every captioned object stays in view), flipped half the time.
    view = training_view(48, (0.3, 1.0), captions=True)
    assert view.scale == (1.0, 1.0) and view.flip == 0.5
    outs = [view(sample, torch.Generator().manual_seed(seed)) for seed in range(12)]
    assert {o["caption"] for o in outs} == {"The sofa is to the left of the lamp.", "The sofa is to the right of the lamp."}
    for out in outs:
        flipped = out["caption"].endswith("right of the lamp.")
        expected = sample["rgb"].flip(-1) if flipped else sample["rgb"]
        assert torch.allclose(out["rgb"].float(), expected.float(), atol=1e-3)


def view_quality(root):
    """(smallest median depth in metres, largest one-class pixel share) over every frame of every split."""
    depths, shares = [], []
    for split in ("pretrain", "eval", "transfer"):
        frames = FrameDataset(root, split, ["depth", "semantic"])
        for index in range(len(frames)):
            depth, semantic = frames[index]["depth"].numpy().ravel(), frames[index]["semantic"].numpy().ravel()
            depths.append(np.median(depth[depth > 0]))
            shares.append(np.bincount(semantic).max() / semantic.size)
    return min(depths), max(shares)


def test_no_frame_of_any_split_faces_a_blank_wall(dataset, tmp_path):
    # Views and walk steps alike pass the rule on a 32 x 24 probe; full frames agree within a margin.
    nearest, share = view_quality(dataset)
    assert nearest >= 0.9 and share <= 0.95  # collect.views.min_view_depth=1.0, max_class_share=0.9
    # With the rule off, walks do face walls: the check above can fail.
    assert collect(tmp_path, "collect.frames.pretrain=60", "collect.views.min_view_depth=0",
                   "collect.views.max_class_share=1.0") == 0
    nearest, share = view_quality(tmp_path / "procedural-0" / "data")
    assert nearest < 0.9 or share > 0.95


@pytest.fixture(scope="module")
def planned_frames():
    """Four planned 48-px frames of the default space, its rendered frames, and worker settings with a
    helper two frames ahead."""
    from dataclasses import replace

    from omegaconf import OmegaConf

    from tst.collect.plan import make_plan
    from tst.collect.run import worker_settings
    from tst.config import load
    from tst.envs.registry import make_space
    from tst.modalities import RENDERED

    cfg = load("collect", SMALL)
    collect_cfg = OmegaConf.merge(cfg.collect, {"frames": {"pretrain": 4, "eval": 0, "transfer": 0},
                                                "splits": ["pretrain"], "transfer_spaces": []})
    space = make_space(cfg.space)
    plan = make_plan(collect_cfg, OmegaConf.to_container(cfg.space, resolve=True), space, [], None)
    frames = plan.frames["pretrain"]
    settings = replace(worker_settings(collect_cfg, plan, Path("unused"), 1, space.taxonomy), encode_ahead=2)
    return space, frames, [space.render(p.camera, RENDERED) for p in frames], settings


@pytest.mark.parametrize("helper", ["thread", "process"])
def test_encoding_helpers_give_the_inline_bytes_in_order(planned_frames, helper):
    from tst.collect.encoder import ProcessEncoder, SpaceFacts, ThreadEncoder
    from tst.collect.worker import encode_frame

    space, frames, rendered, settings = planned_frames
    inline = [encode_frame(p, f, SpaceFacts.of(space, p), settings) for p, f in zip(frames, rendered)]
    encoder = (ThreadEncoder if helper == "thread" else ProcessEncoder)(settings)
    try:
        for p, f in zip(frames, rendered):
            encoder.submit(p, f, SpaceFacts.of(space, p))
        assert [encoder.result() for _ in frames] == inline
    finally:
        encoder.close()


def test_encoding_process_reports_a_failed_frame_and_its_own_death(planned_frames):
    from tst.collect.encoder import ProcessEncoder, SpaceFacts
    from tst.frame import Frame

    space, frames, rendered, settings = planned_frames
    encoder = ProcessEncoder(settings)
    try:
        broken = Frame(rendered[0].camera, {k: v for k, v in rendered[0].modalities.items() if k != "semantic"},
                       rendered[0].meta)
        encoder.submit(frames[0], broken, SpaceFacts.of(space, frames[0]))
        with pytest.raises(TSTError, match="encoding a frame failed: KeyError"):
            encoder.result()
        encoder.process.kill()
        encoder.process.join()
        with pytest.raises(TSTError, match="the encoding process died"):
            encoder.result()
    finally:
        encoder.close()
