"""The `tst` command: help, spaces list/render, bench, errors as one line, and bad input."""

import json
import subprocess
import sys

import pytest
import trimesh
from PIL import Image

from tst.orchestration.cli import SUBCOMMANDS, main
from tst.errors import TSTError


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_overview_lists_every_subcommand(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for name in ("collect", "pretrain", "transfer", "deploy", "run", "report", "bench", "spaces"):
        assert name in out and name in SUBCOMMANDS


def test_help_lists_config_groups_and_keys(capsys):
    code, out, _ = run(["spaces", "--help"], capsys)
    assert code == 0
    assert "space: habitat, mesh, procedural, replica, scannetpp, thor" in out
    for key in ("views:", "size:", "workspace_dir:", "seed:", "max_edge:"):
        assert key in out
    code, out, _ = run(["bench", "render", "--help"], capsys)
    assert code == 0 and "sizes:" in out and "reader_workers:" in out


def test_spaces_list(capsys):
    code, out, _ = run(["spaces", "list"], capsys)
    assert code == 0
    assert "procedural" in out and "mesh" in out and "yes" in out


def test_spaces_render_writes_sheet_floorplan_manifest_and_tracks(tmp_path, workspace, capsys):
    out_png = tmp_path / "sheet.png"
    code, _, err = run(["spaces", "render", "space=procedural", "space.seed=3", "views=3", "size=48",
                        f"out={out_png}", "run_name=r1", *workspace], capsys)
    assert code == 0, err
    sheet = Image.open(out_png)
    assert sheet.width >= 5 * 48 and sheet.height >= 3 * 48  # five columns, three rows
    assert Image.open(tmp_path / "sheet-floorplan.png").width > 100
    artifact = tmp_path / "ws" / "procedural-3" / "spaces" / "r1"
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["stage"] == "spaces.render"
    assert manifest["config"]["space"]["seed"] == 3 and manifest["config"]["views"] == 3
    assert manifest["code_version"].startswith("0.")
    assert manifest["outputs"]["space"]["triangles"] > 100_000
    assert (artifact / "sheet.png").read_bytes() == out_png.read_bytes()
    assert len(json.loads((artifact / "cameras.json").read_text())) == 3

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tst"], output_format="list")
    assert len(runs) == 1
    assert runs[0].data.params["space.seed"] == "3"
    assert runs[0].data.tags["stage"] == "spaces.render"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id, "images")}
    assert artifacts == {"images/sheet.png", "images/floorplan.png"}


def test_mesh_space_renders_from_the_cli(tmp_path, workspace, capsys):
    room = trimesh.creation.box((6.0, 5.0, 2.6))
    room.apply_translation([0, 0, 1.3])
    room.invert()  # faces point inwards: a room to stand in
    chair = trimesh.creation.box((0.5, 0.5, 0.9))
    chair.apply_translation([1.5, 1.0, 0.45])
    scene = trimesh.Scene()
    scene.add_geometry(room, node_name="Room_floor_and_walls")
    scene.add_geometry(chair, node_name="Chair")
    path = tmp_path / "room.ply"
    path.write_bytes(trimesh.exchange.ply.export_ply(trimesh.util.concatenate([room, chair])))
    glb = tmp_path / "room.glb"
    scene.export(glb)
    labels = tmp_path / "labels.yaml"
    labels.write_text("match:\n  'chair*': chair\n  'room*': wall\n")
    code, _, err = run(["spaces", "render", "space=mesh", f"space.path={glb}", f"space.labels={labels}",
                        "space.up_axis=z", "views=2", "size=32", "run_name=m", *workspace, "tracking.enabled=false"],
                       capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "ws" / "room" / "spaces" / "m" / "manifest.json").read_text())
    assert set(manifest["inputs"]) == {"mesh", "labels"}
    assert len(manifest["inputs"]["mesh"]["fingerprint"]) == 16


def test_bench_render_prints_json(tmp_path, workspace, capsys):
    code, out, err = run(["bench", "render", "space.max_edge=0.3", "render_bench.min_triangles=0", "render_bench.sizes=[24]",
                          "render_bench.frames=3", "render_bench.process_frames=4", "render_bench.process_size=24",
                          "render_bench.workers=[1,2]", *workspace,
                          "tracking.enabled=false"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["sizes"]["24"]["render_fps"] > 0 and report["sizes"]["24"]["raycast_only_fps"] > 0
    assert set(report["processes"]["fps"]) == {"1", "2"} and report["processes"]["speedup"] > 0
    assert set(report["targets"]) == {"render_over_raycast_24px", "process_speedup"}
    speedup = report["targets"]["process_speedup"]
    assert speedup["value"] == report["processes"]["speedup"] and speedup["met"] == (speedup["value"] >= 1.8)


BAD_INPUTS = [
    (["spaces", "render", "space=nowhere"], "unknown space 'nowhere': expected one of habitat, mesh, procedural, replica, scannetpp, thor"),
    (["spaces", "render", "space.backend=habitatx"], "unknown space backend 'habitatx'"),
    (["spaces", "render", "space.seed=abc"], "space.seed: expected a non-negative integer, got 'abc'"),
    (["spaces", "render", "space.seed=2.5"], "space.seed: expected a non-negative integer, got 2.5"),
    (["spaces", "render", "space.seed=-3"], "space.seed: expected a non-negative integer, got -3"),
    (["spaces", "render", "size=0"], "size: expected a positive integer of at most 2048"),
    (["spaces", "render", "views=-1"], "views: expected a positive integer"),
    (["spaces", "render", "space=mesh"], "space.path: missing"),
    (["spaces", "render", "space=mesh", "space.path=/no/such/scene.glb"], "does not exist"),
    (["spaces", "render", "nokey=3"], "bad override"),
    (["spaces", "render", "out=sheet.jpg"], "out: expected a .png"),
    (["spaces", "dance"], "unknown action 'dance'"),
    (["bench", "fly"], "unknown benchmark 'fly'"),
    (["bench", "render", "render_bench.sizes=[0]"], "render_bench.sizes[0]: expected a positive integer"),
    (["bench", "render", "render_bench.workers=[-2]"], "render_bench.workers[0]: expected a positive integer"),
    (["bench", "pretrain", "pretrain_bench.models=[xl]"], "pretrain_bench.models[0]: expected tiny, s or b, got 'xl'"),
    (["bench", "pretrain", "pretrain_bench.steps=0"], "pretrain_bench.steps: expected a positive integer, got 0"),
    (["bench", "deploy", "deploy_bench.cpu_runtimes=[tensorrt]"], "deploy_bench.cpu_runtimes[0]: expected eager, compiled, onnx or onnx-int8"),
    (["bench", "gpu", "gpu_bench.modes=[]"], "gpu_bench.modes: expected a non-empty list"),
    (["run", "experiment=smoke", "experiment.seeds=[]"], "experiment.seeds: expected a non-empty list"),
    (["deploy", "deploy.tasks=[seg,pose]"], "deploy.tasks[1]: expected a registered task (seg, det, caption, ...), got 'pose'"),
    (["deploy", "deploy.model=/no/such/run"], "deploy.model: /no/such/run does not exist; expected a tst transfer run folder"),
    (["run", "experiment=smoke", "experiment.deploy_backbone=clip"], "experiment.deploy_backbone: 'clip' is not among"),
    (["fly"], "unknown command 'fly'"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_bad_input_one_line_error_nonzero_exit_nothing_written(args, message, tmp_path, workspace, capsys):
    code, out, err = run(args + workspace, capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("content", [b"", b"solid garbage \x00\x01\x02", None])
def test_bad_mesh_files_from_the_cli(content, tmp_path, workspace, capsys):
    path = tmp_path / "scene.obj"
    if content is not None:
        path.write_bytes(content)
    else:
        path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")  # vertices but no faces
    code, _, err = run(["spaces", "render", "space=mesh", f"space.path={path}", *workspace], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and str(path) in err
    assert not (tmp_path / "ws").exists()


def test_label_map_with_unknown_class_from_the_cli(tmp_path, workspace, capsys):
    path = tmp_path / "box.ply"
    path.write_bytes(trimesh.exchange.ply.export_ply(trimesh.creation.box()))
    labels = tmp_path / "labels.yaml"
    labels.write_text("match:\n  'box*': sofaa\n")
    code, _, err = run(["spaces", "render", "space=mesh", f"space.path={path}", f"space.labels={labels}",
                        *workspace], capsys)
    assert code != 0 and "class 'sofaa' is not in the taxonomy" in err
    assert not (tmp_path / "ws").exists()


def test_console_script_is_installed(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tst.orchestration.cli", "deploy", f"workspace_dir={tmp_path}"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "no transfer run with the heads" in result.stderr
    result = subprocess.run(["tst", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "spaces" in result.stdout


def test_an_unwritable_output_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    """Each output key is checked when the command is composed: one line naming the key, exit 2,
    nothing rendered (no progress line) and nothing written."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    small = ["views=1", "size=24"]
    cases = [(["spaces", "render", f"workspace_dir={blocker / 'ws'}"],
              f"workspace_dir: {blocker / 'ws'}: {blocker} is a file; expected a folder this user may write to"),
             (["spaces", "render", f"workspace_dir={tmp_path / 'ws'}", f"out={blocker / 'sheet.png'}"],
              f"out: {blocker / 'sheet.png'}: {blocker} is a file"),
             (["collect", f"workspace_dir={tmp_path / 'ws'}", f"data_dir={blocker / 'data'}"],
              f"data_dir: {blocker / 'data'}: {blocker} is a file"),
             (["deploy", "export", f"workspace_dir={tmp_path / 'ws'}", f"deploy.export_dir={blocker / 'x'}"],
              f"deploy.export_dir: {blocker / 'x'}: {blocker} is a file")]
    if sys.platform.startswith("linux"):  # sysfs refuses new entries, even to root
        cases.append((["spaces", "render", "workspace_dir=/sys/tst-workspace"],
                       "workspace_dir: /sys/tst-workspace: cannot write in /sys (operation not permitted)"))
    for args, message in cases:
        code, _, err = run(args + small * (args[0] == "spaces"), capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"tst {args[0]}: error: {message}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    # A file system that fails during the work (here: a full disk) is one line too, by errno.
    import errno

    import tst.envs.commands

    def full_disk(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ws" / "x.png"))

    monkeypatch.setattr(tst.envs.commands, "render_space", full_disk)
    code, _, err = run(["spaces", "render", f"workspace_dir={tmp_path / 'ws'}", *small], capsys)
    assert code == 2 and err.strip() == (f"tst spaces: error: {tmp_path / 'ws' / 'x.png'}: no space left on device; "
                                         "the disk is full; free space and run the command again (it resumes)")
    # TST_DEBUG=1 keeps the traceback, for user errors too.
    monkeypatch.setenv("TST_DEBUG", "1")
    with pytest.raises(OSError):
        main(["spaces", "render", f"workspace_dir={tmp_path / 'ws'}", *small])
    with pytest.raises(TSTError, match="size: expected a positive integer"):
        main(["spaces", "render", "size=0", f"workspace_dir={tmp_path / 'ws'}"])


def test_device_check_runs_without_a_gpu_and_writes_its_verdicts(tmp_path):
    from pathlib import Path

    out = tmp_path / "device-check.json"
    script = Path(__file__).resolve().parents[1] / "scripts" / "device-check.sh"
    result = subprocess.run(["bash", str(script), str(out), "gpu_bench.repeats=2", "gpu_bench.warmup=1",
                             "gpu_bench.steps=1", "gpu_bench.caption_words=4", f"workspace_dir={tmp_path / 'ws'}"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no CUDA GPU visible; the GPU rows are skipped" in " ".join(result.stderr.split())
    report = json.loads(out.read_text())
    assert report["deploy"]["rows"]["fp32_eager"]["p50_ms"] > 0
    assert report["pretrain"]["samples_per_s"] > 0 and report["pretrain"]["flops_per_step"] > 0
    for target in report["targets"].values():
        assert set(target) == {"value", "goal", "unit", "met"}
