"""The deploy stage: predictor, export parity, the agent loop, bad input."""

import json

import numpy as np
import pytest
import torch

from tst.orchestration.cli import main
from tst.config import load
from tst.errors import TSTError

from conftest import collect_small

TINY = ["model.dim=32", "model.encoder_depth=1", "model.heads=2", "data.num_workers=0", "data.batch_size=4",
        "transfer.caption.max_words=12", "tracking.enabled=false"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny dataset, a multi-task model and a segmentation-only one."""
    tmp = tmp_path_factory.mktemp("deploy")
    collect_small(tmp, 8, 8, 8, 64)
    assert main(["transfer", f"workspace_dir={tmp}", "transfer.task=[seg,det,caption]", "transfer.steps=2",
                 "run_name=multi", *TINY]) == 0
    assert main(["transfer", f"workspace_dir={tmp}", "transfer.task=seg", "transfer.steps=1",
                 "run_name=seg-only", *TINY]) == 0
    return tmp


def _model(workspace, name="multi"):
    return workspace / "procedural-0" / "transfer" / name


def _predictor(workspace, **options):
    from tst.deploy.predictor import Predictor

    return Predictor.from_run(_model(workspace), **options)


def test_predictor_outputs_every_task(workspace):
    predictor = _predictor(workspace)
    prediction = predictor(np.zeros((64, 64, 3), np.uint8))
    assert prediction.semantic.shape == (64, 64) and prediction.semantic.dtype == np.int64
    assert prediction.boxes.shape[1] == 4 and len(prediction.scores) == len(prediction.classes)
    assert isinstance(prediction.caption, str)


def test_a_run_stored_with_the_flat_task_keys_still_loads(workspace, tmp_path):
    """Transfer runs made before transfer.det/caption were nested (det_score_threshold, beam, ...) load
    with the values they were trained with, and with the four-level detection pyramid every run had before
    transfer.det.pyramid existed."""
    import shutil

    from tst.transfer.checkpoint import load_transfer
    from tst.transfer.detection import LEVELS, DetectionHead

    old = tmp_path / "old"
    shutil.copytree(_model(workspace), old)
    model = load_transfer(old).module  # its model.pt as such a run saved it: a detection head of four levels
    model.heads["det"] = DetectionHead(model.backbone.dim, len(model.tasks["det"].taxonomy), model.tasks["det"].width,
                                       LEVELS)
    torch.save(model.state_dict(), old / "model.pt")
    with pytest.raises(TSTError, match="model.pt: does not match the run's model .*size mismatch"):
        load_transfer(old)  # its manifest still names the three-level default: one line, not a traceback
    manifest = json.loads((old / "manifest.json").read_text())
    settings = manifest["config"]["transfer"]
    det, caption = settings.pop("det"), settings.pop("caption")
    settings |= {"det_score_threshold": 0.3, "det_iou_threshold": det["iou_threshold"], "beam": 2,
                 "max_caption_words": caption["max_words"], "caption_min_count": 1, "meteor": False}
    (old / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_transfer(old).module
    assert loaded.tasks["det"].score_threshold == 0.3 and loaded.tasks["caption"].beam == 2
    assert len(loaded.heads["det"].scales) == len(LEVELS)


def test_export_matches_onnx_runtime_and_the_onnx_predictor_agrees(workspace, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["deploy", "export", f"workspace_dir={workspace}", f"deploy.model={_model(workspace)}",
                 "deploy.export_frames=2", "tracking.enabled=false"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert max(report["max_abs_difference"].values()) <= 1e-4
    assert report["int8"]["refused"] is None and 0 < max(report["int8"]["max_relative_difference"].values()) <= 0.1
    folder = workspace / "procedural-0" / "deploy" / "exports" / "multi"
    written = {p.name for p in folder.iterdir()}
    # Beam 1 (the default): captions decode in one graph, and the per-token step graph is not written.
    assert {"dense.onnx", "dense-int8.onnx", "dense.pt2", "caption-greedy.onnx", "caption.pt2"} <= written
    assert "caption.onnx" not in written and "caption_greedy" in report["max_abs_difference"]
    assert (folder / "dense-int8.onnx").stat().st_size < (folder / "dense.onnx").stat().st_size
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    eager, onnx = _predictor(workspace)(rgb), _predictor(workspace, runtime="onnx", export_dir=folder)(rgb)
    assert (eager.semantic == onnx.semantic).mean() > 0.99 and eager.caption == onnx.caption
    int8 = _predictor(workspace, runtime="onnx", precision="int8", export_dir=folder)(rgb)
    assert (eager.semantic == int8.semantic).mean() > 0.9
    # The greedy graph decodes as PyTorch does at any length: capped at the decoder's, forced to it, or cut short.
    from tst.deploy.export import OnnxGraphs
    from tst.transfer.checkpoint import load_transfer

    module = load_transfer(_model(workspace)).module.eval()
    graphs, decoder = OnnxGraphs(folder, module), module.heads["caption"]
    cross = graphs.run_dense(torch.rand(1, 3, 64, 64))["caption_cross"]
    over = decoder.max_length + 5
    for max_length, min_length in ((over, over), (over, 0), (4, 0), (1, 0)):
        tokens, total, length = graphs.caption.greedy(cross, max_length, min_length)
        with torch.no_grad():
            expected = decoder.greedy(cross, min(max_length, decoder.max_length), min_length)
        assert torch.equal(tokens, expected[0]) and torch.equal(length, expected[2])
        assert torch.allclose(total, expected[1], atol=1e-4)
    # A second export into the same folder is refused rather than overwriting it.
    assert main(["deploy", "export", f"workspace_dir={workspace}", f"deploy.model={_model(workspace)}"]) != 0


def test_a_beam_search_model_exports_the_step_graph_and_captions_as_pytorch_does(workspace, tmp_path):
    pytest.importorskip("onnxruntime")
    from tst.deploy.export import OnnxGraphs, export
    from tst.transfer.checkpoint import load_transfer

    module = load_transfer(_model(workspace)).module.eval()
    module.tasks["caption"].beam = 2
    frames = [torch.rand(3, 64, 64) for _ in range(2)]
    checks = export(module, 64, frames, tmp_path / "export")
    assert checks["max_abs_difference"]["caption_logits"] <= 1e-4
    written = {p.name for p in (tmp_path / "export").iterdir()}
    assert "caption.onnx" in written and "caption-greedy.onnx" not in written
    graphs = OnnxGraphs(tmp_path / "export", module)
    with torch.no_grad():
        for frame in frames:
            assert graphs(frame[None])["caption"] == module(frame[None])["caption"]


def test_export_refuses_a_graph_that_disagrees(workspace, monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    from tst.deploy import export as export_module
    from tst.transfer.checkpoint import load_transfer

    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # no difference can pass
    model = load_transfer(_model(workspace, "seg-only"))
    with pytest.raises(TSTError, match="differs from PyTorch"):
        export_module.export(model.module, 64, [torch.rand(3, 64, 64)], tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_an_int8_graph_that_disagrees_is_left_out_and_its_runtime_says_why(workspace, monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    from tst.deploy import export as export_module
    from tst.deploy.predictor import Predictor
    from tst.transfer.checkpoint import load_transfer

    monkeypatch.setattr(export_module, "INT8_TOLERANCE", 0.0)  # int8 never matches fp32 exactly
    run = _model(workspace, "seg-only")
    model = load_transfer(run)
    checks = export_module.export(model.module, 64, [torch.rand(3, 64, 64)], tmp_path / "export", run)
    assert "of the output's range" in checks["int8"]["refused"]
    assert not (tmp_path / "export" / "dense-int8.onnx").exists() and (tmp_path / "export" / "dense.onnx").is_file()
    with pytest.raises(TSTError, match=r"dense-int8.onnx: not written by tst deploy export: its '.*' differed"):
        Predictor(model, runtime="onnx", precision="int8", export_dir=tmp_path / "export")


def _loop(workspace, steps, overlap, tasks=("seg", "det", "caption"), name="multi", caption_every=1, pace_hz=None,
          background_captions=False):
    from tst.deploy.loop import run_loop
    from tst.deploy.observations import RenderProcess
    from tst.deploy.predictor import Predictor
    from tst.deploy.run import path_settings

    cfg = load("deploy", [f"workspace_dir={workspace}"])
    predictor = Predictor.from_run(_model(workspace, name), tasks)
    with RenderProcess(path_settings(cfg, predictor.image_size, steps)) as renderer:
        return predictor, run_loop(predictor, renderer, steps, overlap, caption_every=caption_every, pace_hz=pace_hz,
                                   background_captions=background_captions)


def test_loop_accuracy_equals_offline_evaluation_on_the_same_frames(workspace):
    from tst.transfer.run import evaluate

    predictor, result = _loop(workspace, 6, overlap=True)
    assert len(result.steps) == 6
    samples = [{"rgb": torch.from_numpy(o.rgb).permute(2, 0, 1).float() / 255, "semantic": torch.from_numpy(o.semantic),
                "boxes": torch.from_numpy(o.boxes), "box_classes": torch.from_numpy(o.box_classes),
                "caption": o.caption, "key": str(o.step)} for o in (s.observation for s in result.steps)]
    offline, _ = evaluate(predictor.module, samples, batch_size=3)
    for key, value in result.metrics.items():
        assert value == pytest.approx(offline[key], abs=1e-6), key


def test_captions_every_third_step_carry_over_and_are_scored_where_they_ran(workspace):
    from tst.deploy.loop import latency_summary
    from tst.transfer.run import evaluate

    predictor, result = _loop(workspace, 7, overlap=True, caption_every=3)
    assert [s.prediction.caption_step for s in result.steps] == [0, 0, 0, 3, 3, 3, 6]
    assert all(s.prediction.caption == result.steps[s.prediction.caption_step].prediction.caption for s in result.steps)
    assert latency_summary(result, 5.0)["captioned_steps"] == 3
    captioned = [result.steps[i].observation for i in (0, 3, 6)]
    samples = [{"rgb": torch.from_numpy(o.rgb).permute(2, 0, 1).float() / 255, "semantic": torch.from_numpy(o.semantic),
                "boxes": torch.from_numpy(o.boxes), "box_classes": torch.from_numpy(o.box_classes),
                "caption": o.caption, "key": str(o.step)} for o in captioned]
    offline, _ = evaluate(predictor.module, samples, batch_size=3)
    caption_keys = [k for k in result.metrics if k.startswith("caption_")]
    assert caption_keys and all(result.metrics[k] == pytest.approx(offline[k], abs=1e-6) for k in caption_keys)


def test_background_captions_describe_earlier_steps_and_are_scored_on_them(workspace):
    from tst.deploy.loop import latency_summary
    from tst.transfer.run import evaluate

    predictor, result = _loop(workspace, 8, overlap=True, caption_every=3, background_captions=True)
    captioned = result.captioned
    assert captioned[0] == 0 and all(b - a >= 3 for a, b in zip(captioned, captioned[1:]))
    assert latency_summary(result, 5.0)["captioned_steps"] == len(captioned)
    for record in result.steps:  # a caption joins the predictions only after the step it describes
        assert record.caption_step is None or (record.caption_step in captioned and record.caption_step < record.step)
    samples = [{"rgb": torch.from_numpy(o.rgb).permute(2, 0, 1).float() / 255, "semantic": torch.from_numpy(o.semantic),
                "boxes": torch.from_numpy(o.boxes), "box_classes": torch.from_numpy(o.box_classes),
                "caption": o.caption, "key": str(o.step)} for o in (result.steps[i].observation for i in captioned)]
    offline, _ = evaluate(predictor.module, samples, batch_size=3)
    caption_keys = [k for k in result.metrics if k.startswith("caption_")]
    assert caption_keys and all(result.metrics[k] == pytest.approx(offline[k], abs=1e-6) for k in caption_keys)
    _, uncaptioned = _loop(workspace, 4, overlap=True, tasks=("seg",), name="seg-only", background_captions=True)
    assert uncaptioned.captioned == [] and all(r.caption_step is None for r in uncaptioned.steps)


def test_overlap_makes_the_period_shorter_than_render_plus_infer(workspace):
    from tst.deploy.loop import latency_summary

    _, result = _loop(workspace, 20, overlap=True, tasks=("seg",), name="seg-only")
    summary = latency_summary(result, 5.0)
    mean_period_ms = 1000.0 / summary["fps"]  # the sum below is of means too
    assert mean_period_ms < summary["sum_render_infer_ms"]


def test_a_paced_loop_keeps_the_camera_rate(workspace):
    from tst.deploy.loop import latency_summary

    _, result = _loop(workspace, 4, overlap=True, tasks=("seg",), name="seg-only", pace_hz=8.0)
    assert all(s.period_s >= 0.124 for s in result.steps[1:])  # never sooner than 1 / 8 s
    assert latency_summary(result, 8.0)["deadline_misses"] == 0  # the wait for the camera is not a miss


def test_deploy_command_writes_report_strip_and_search(workspace, capsys):
    assert main(["deploy", f"workspace_dir={workspace}", f"deploy.model={_model(workspace)}", "deploy.steps=4",
                 "deploy.task=find", "deploy.target=bed", "run_name=find", "tracking.enabled=false"]) == 0
    out = workspace / "procedural-0" / "deploy" / "find"
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["target"] == "bed" and 1 <= report["steps"] <= 4
    assert {"p50", "p95", "p99"} <= set(report["perception_ms"]) and "seg_miou" in report["online"]
    assert (out / "strip.png").is_file()


@pytest.mark.parametrize("extra, message", [
    (["deploy.target=unicorn"], "deploy.target: 'unicorn'"),
    (["deploy.target=wall"], "stuff class"),
    (["deploy.device=tpu"], "deploy.device"),
    (["deploy.precision=fp8"], "deploy.precision"),
])
def test_bad_deploy_settings(workspace, extra, message, capsys):
    args = ["deploy", f"workspace_dir={workspace}", f"deploy.model={_model(workspace)}", "deploy.task=find",
            "tracking.enabled=false", *extra]
    assert main(args) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], errors


def test_a_model_missing_a_head_is_named(workspace, capsys):
    assert main(["deploy", f"workspace_dir={workspace}", f"deploy.model={_model(workspace, 'seg-only')}",
                 "tracking.enabled=false"]) != 0
    assert "has no det, caption head" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_cuda_without_a_gpu(workspace):
    with pytest.raises(TSTError, match="no CUDA GPU"):
        _predictor(workspace, device="cuda")
    with pytest.warns(UserWarning, match="running on the CPU"):
        assert _predictor(workspace, device="auto").device.type == "cpu"


@pytest.mark.parametrize("observation, message", [
    (np.zeros((32, 32, 3), np.uint8), r"shape \(64, 64, 3\), got uint8 \(32, 32, 3\)"),
    (np.zeros((64, 64, 3), np.float32), "got float32"),
    ([[0]], "got list"),
])
def test_bad_observations(workspace, observation, message):
    with pytest.raises(TSTError, match=message):
        _predictor(workspace)(observation)
