"""`tst report` from transfer run folders created here (the report reads folders, not MLflow)."""

import csv

import numpy as np
import pytest
from PIL import Image

from conftest import collect_small
from tst.orchestration.cli import main
from tst.config import load
from tst.tracking import record_run
from tst.transfer.report import (COLUMNS, Cell, TransferResult, backbone_order, compare, in_row_order, markdown, paired,
                                 tokenizer_quality)
from tst.workspace import atomic_write_json, read_manifest, write_manifest

QUALITY = {"rgb": {"codes_used": 200, "codebook": 256, "perplexity": 150.25, "metric": "mae", "error": 0.05,
                   "baseline_error": 0.08, "split": "eval", "patches": 4096},
           "edges": {"codes_used": 10, "codebook": 256, "perplexity": 3.5, "metric": "balanced_mae", "error": 0.4,
                     "baseline_error": 0.3, "split": "eval", "patches": 4096}}


def _track(workspace, backbone, fraction, seed, metrics, pretrain_steps=None):
    """A finished transfer run folder (metrics.json, predictions.png, manifest), as tst transfer lands it."""
    run_dir = workspace / "procedural-0" / "transfer" / f"{backbone}-{pretrain_steps}-{fraction}-{seed}"
    run_dir.mkdir(parents=True)
    Image.fromarray(np.full((40, 120, 3), 40 * seed, np.uint8)).save(run_dir / "predictions.png")
    atomic_write_json(run_dir / "metrics.json", {"backbone": backbone, "pretrain_steps": pretrain_steps,
                                                 "fraction": fraction, "seed": seed} | metrics)
    write_manifest(run_dir, "transfer", {}, {}, {"metrics": "metrics.json"})


def _seeds(workspace, backbone, columns, pretrain_steps=None):
    """One run per seed; columns: metric -> one value per seed."""
    for seed, values in enumerate(zip(*columns.values())):
        _track(workspace, backbone, 1.0, seed, dict(zip(columns, values)), pretrain_steps)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """scratch and fourm (at 2000 and 1000 pretraining steps) over 3 seeds, mae over 2 seeds overlapping
    scratch on seg, one generalist run, one fourm run at fraction 0.1, and a tokenizers manifest."""
    workspace = tmp_path_factory.mktemp("report")
    _seeds(workspace, "scratch", {"seg_miou": (0.10, 0.11, 0.12), "det_map": (0.05, 0.06, 0.07),
                                  "det_ap50": (0.10, 0.12, 0.14), "caption_cider_d": (0.20, 0.22, 0.24)})
    _seeds(workspace, "fourm", {"seg_miou": (0.30, 0.32, 0.34), "det_map": (0.20, 0.21, 0.22),
                                "det_ap50": (0.40, 0.42, 0.44), "caption_cider_d": (0.21, 0.25, 0.23)}, 2000)
    _seeds(workspace, "fourm", {"seg_miou": (0.20, 0.22, 0.24), "det_map": (0.12, 0.13, 0.14),
                                "det_ap50": (0.30, 0.31, 0.32), "caption_cider_d": (0.20, 0.21, 0.22)}, 1000)
    _seeds(workspace, "mae", {"seg_miou": (0.10, 0.14)}, 2000)
    _track(workspace, "fourm", 0.1, 0, {"seg_miou": 0.2}, 2000)
    _track(workspace, "generalist", 1.0, 0, {"seg_miou": 0.25})
    write_manifest(workspace / "procedural-0" / "pretrain" / "tokenizers", "pretrain.tokenizers", {}, {},
                   {"quality": QUALITY})
    return workspace


@pytest.fixture(scope="module")
def written(store):
    """The report folder and results.md of the default report."""
    assert main(["report", f"workspace_dir={store}"]) == 0
    out = store / "procedural-0" / "report"
    return out, (out / "results.md").read_text()


def _rows(text):
    """backbone -> its cells, from the main table of results.md."""
    lines = [line for line in text.split("\n## ")[0].splitlines() if line.startswith("| ")][1:]
    return {cells[1].strip(): [c.strip() for c in cells[2:-1]] for cells in (line.split("|") for line in lines)}


def test_report_table_charts_and_pictures(written, capsys):
    out, text = written
    rows = _rows(text)
    assert list(rows) == ["scratch", "mae", "fourm", "generalist"]
    assert rows["scratch"][0] == "11.0 ± 1.0"  # mean and sample std of 0.10, 0.11, 0.12, x100
    assert rows["generalist"][1:] == ["–"] * 3  # the generalist has no det/caption runs
    assert "seeds 0, 1, 2; one seed only: generalist" in text
    with open(out / "results.csv") as handle:
        records = {r["backbone"]: r for r in csv.DictReader(handle)}
    assert float(records["fourm"]["seg_miou_mean"]) == pytest.approx(0.32) and records["fourm"]["seg_miou_runs"] == "3"
    assert records["fourm"]["seg_miou_vs_scratch"] == "significant"
    assert records["mae"]["seg_miou_vs_scratch"] == "within noise"
    assert records["generalist"]["seg_miou_vs_scratch"] == "single seed"
    assert records["scratch"]["seg_miou_vs_scratch"] == ""
    for picture in ("results.png", "label_efficiency.png", "pretrain_length.png", "qualitative.png"):
        assert Image.open(out / picture).size[0] > 100


def test_two_sigma_marker(written):
    rows = _rows(written[1])
    assert rows["fourm"][0] == "32.0 ± 2.0 *"  # gap 21.0 to scratch, 2σ = 4.0
    assert rows["fourm"][1] == "21.0 ± 1.0 *"
    assert rows["fourm"][3] == "23.0 ± 2.0"  # gap 1.0, 2σ = 4.0: overlapping
    assert rows["mae"][0] == "12.0 ± 2.8"  # gap 1.0, 2σ = 5.7
    assert rows["generalist"][0] == "25.0"  # one seed: no std, no marker
    assert not any(cell.endswith("*") for cell in rows["scratch"])
    assert "*: differs from the scratch cell of its column by more than 2σ" in written[1]
    assert "Rows resting on one seed (no std, so those cells get no marker): generalist." in written[1]


def test_winner_lines(written):
    text = written[1]
    assert "- seg mIoU: fourm wins (32.0 vs next best generalist 25.0; gap 7.0, single seed: within noise)." in text
    assert "- det mAP: fourm wins (21.0 vs next best scratch 6.0; gap 15.0, 2σ = 2.0: significant)." in text
    assert "- caption CIDEr-D: fourm wins (23.0 vs next best scratch 22.0; gap 1.0, 2σ = 4.0: within noise)." in text


def test_paired_table(written):
    out, text = written
    paired = {cells[1].strip(): [c.strip() for c in cells[2:-1]] for cells in
              (line.split("|") for line in text.split("## Paired by seed, against scratch")[1].split("\n## ")[0]
               .splitlines() if line.startswith("| "))}
    assert list(paired) == ["backbone", "mae", "fourm"]  # the generalist shares one seed with scratch: no row
    assert paired["fourm"][0].startswith("+21.0 ± 1.0 (3 seeds, p = 0.00") and paired["fourm"][0].endswith("†")
    assert paired["mae"][0] == "+1.5 ± 2.1 (2 seeds, p = 0.500)"  # seeds 0 and 1: differences 0.00 and 0.03
    assert paired["fourm"][3] == "+1.0 ± 2.0 (3 seeds, p = 0.478)"  # t = 0.87, df = 2
    assert paired["mae"][1] == "–"  # mae has no det runs
    with open(out / "results.csv") as handle:
        records = {r["backbone"]: r for r in csv.DictReader(handle)}
    assert float(records["fourm"]["seg_miou_paired_difference"]) == pytest.approx(0.21)
    assert float(records["mae"]["seg_miou_paired_p"]) == pytest.approx(0.5)
    assert records["generalist"]["seg_miou_paired_p"] == "" and records["scratch"]["seg_miou_paired_p"] == ""


def test_paired_differences_cancel_shared_seed_noise():
    """Seeds that move every backbone alike: unpaired 2σ sees noise, the paired test sees the steady lead."""
    scratch = Cell([0.06, 0.10, 0.09], [0, 1, 2])
    mae = Cell([0.065, 0.108, 0.099], [0, 1, 2])
    assert not compare(mae, scratch).significant
    pair = paired(mae, scratch)
    assert pair.differences == pytest.approx([0.005, 0.008, 0.009]) and pair.significant
    assert paired(mae, Cell([0.1], [0])) is None  # one shared seed: no test


def test_tokenizer_table(written, tmp_path):
    text = written[1]
    assert "| rgb | 200 / 256 (78%) | 150.2 | 0.0500 (mae) | 0.0800 | yes |" in text
    assert "| edges | 10 / 256 (4%) | 3.5 | 0.4000 (balanced_mae) | 0.3000 | no |" in text
    assert tokenizer_quality(tmp_path) is None  # no manifest
    write_manifest(tmp_path, "pretrain.tokenizers", {}, {}, {"vocab": 256})
    assert tokenizer_quality(tmp_path) is None  # a manifest without quality


def test_table_uses_the_longest_pretraining(written):
    out, text = written
    assert _rows(text)["fourm"][0].startswith("32.0")  # the 2000-step runs only, not mixed with 1000 (22.0)
    assert ("fourm: the table uses its runs at its longest pretraining, 2000 steps (also run: 1000; "
            "see pretrain_length.png).") in text
    assert "mae: the table uses" not in text  # one length only
    assert (out / "pretrain_length.png").is_file()


def test_report_at_a_chosen_fraction(store, capsys):
    assert main(["report", f"workspace_dir={store}", "report.fraction=0.1", f"report.out={store / 'r01'}"]) == 0
    table = (store / "r01" / "results.md").read_text()
    assert "fraction 0.1" in table and "| fourm | 20.0 |" in table and "| scratch |" not in table
    assert "No scratch row at this fraction" in table
    assert not (store / "r01" / "pretrain_length.png").exists()  # fourm has one length at 0.1


def test_single_seed_scratch_marks_nothing():
    rows = {name: {m: Cell(list(values) if m == "seg_miou" else []) for m in COLUMNS}
            for name, values in (("scratch", [0.1]), ("fourm", [0.5, 0.51]))}
    assert compare(rows["fourm"]["seg_miou"], rows["scratch"]["seg_miou"]).sigma is None
    text = markdown(rows, 1.0, "s", [TransferResult("scratch", 1.0, 0, {})])
    assert "| fourm | 50.5 ± 0.7 | – | – | – |" in text
    assert "scratch rests on one seed in seg mIoU: no cell of those columns can be marked." in text


def test_variant_rows_follow_report_rows():
    """scratch, the objectives and the generalists keep their places; variants follow report.rows (tst run
    passes experiment.backbones), and a variant it does not name comes last, alphabetically."""
    results = [TransferResult(name, 0.1, 0, {}) for name in ("zeta", "rgb+depth", "generalist", "all", "rgb", "scratch")]
    assert backbone_order(in_row_order(results, ["rgb", "rgb+depth", "all"])) == [
        "scratch", "generalist", "rgb", "rgb+depth", "all", "zeta"]
    assert backbone_order(in_row_order(results, [])) == ["scratch", "generalist", "all", "rgb", "rgb+depth", "zeta"]


def test_report_without_runs_says_so(tmp_path, capsys):
    assert main(["report", f"workspace_dir={tmp_path}"]) != 0
    assert "no finished transfer runs" in capsys.readouterr().err


def test_report_reads_folders_not_the_tracking_store(store, tmp_path):
    """A run MLflow still lists but whose folder was deleted leaves the table; the report's manifest names
    the run folders it read."""
    ghost = store / "procedural-0" / "transfer" / "ghost"
    ghost.mkdir()
    record_run(load("transfer", [f"workspace_dir={store}"]), "transfer", "procedural-0", ghost, {}, {},
               {"seg_miou": 0.9}, tags={"backbone": "ghost", "fraction": "1.0", "seed": "0"})
    ghost.rmdir()
    assert main(["report", f"workspace_dir={store}", f"report.out={tmp_path}"]) == 0
    assert "| ghost |" not in (tmp_path / "results.md").read_text()
    manifest = read_manifest(tmp_path)
    assert manifest["stage"] == "report" and "scratch-None-1.0-2" in manifest["inputs"]
    assert "results.md" in manifest["outputs"]["files"] and "label_efficiency.png" in manifest["outputs"]["files"]


def _pretrained(backbone, seed, seg, share, external, frames, held_out=None):
    data = {"objective": "multimae", "test_space_share": share, "external": external, "frames": frames}
    return TransferResult(backbone, 0.1, seed, {"seg_miou": seg}, held_out=held_out or {}, pretrain_data=data)


def test_data_worth_and_tradeoff_analyses(tmp_path):
    """Backbones pretrained on 1, 2 and 4 other spaces only form the data-worth curve, the test-space-only
    ones its level lines; a mixed share forms the trade-off curve with its budget's other shares."""
    from tst.transfer.pretraining_data import (data_worth_chart, data_worth_groups, data_worth_markdown,
                                               tradeoff_chart, tradeoff_groups, tradeoff_markdown)

    others = [f"procedural-{k}/data" for k in range(11, 15)]
    worth = [_pretrained(f"others-{n}", seed, 0.05 * n + 0.01 * seed, 0.0, others[:n], 500 * n)
             for n in (1, 2, 4) for seed in (0, 1)]
    worth += [_pretrained("own-500", seed, 0.15, 1.0, [], 500) for seed in (0, 1)]
    worth += [TransferResult("scratch", 0.1, seed, {"seg_miou": 0.05}) for seed in (0, 1)]
    groups = data_worth_groups(worth)
    assert list(groups) == ["multimae"] and list(groups["multimae"][0]) == ["others-1", "others-2", "others-4"]
    assert list(groups["multimae"][1]) == ["own-500"] and not tradeoff_groups(worth)
    text = data_worth_markdown(groups, worth, "procedural-0")
    assert "| others-2 | 2 other spaces (procedural-11, procedural-12) | 1000 | 10.5 ± 0.7 |" in text
    assert "| own-500 | the test space only | 500 | 15.0 ± 0.0 |" in text
    assert "| scratch | – | – | 5.0 ± 0.0 |" in text
    (tmp_path / "data_worth.png").write_bytes(data_worth_chart(groups, worth, "procedural-0"))

    mixed = [_pretrained(name, 0, seg, share, others[:2] if share < 1 else [], None, {"procedural-11": {"seg_miou": h}})
             for name, share, seg, h in (("multimae", 1.0, 0.12, 0.08), ("mixed-0.5", 0.5, 0.11, 0.1),
                                         ("others-only", 0.0, 0.09, 0.11))]
    curves = tradeoff_groups(mixed)
    assert list(curves) == ["multimae, all test-space frames"] and not data_worth_groups(mixed)
    assert list(curves["multimae, all test-space frames"]) == ["multimae", "mixed-0.5", "others-only"]
    text = tradeoff_markdown(curves, mixed, "procedural-0")
    assert "| mixed-0.5 | 0.5 | procedural-11, procedural-12 | 11.0 | 10.0 |" in text
    (tmp_path / "tradeoff.png").write_bytes(tradeoff_chart(curves, mixed, "procedural-0"))
    for picture in ("data_worth.png", "tradeoff.png"):
        assert Image.open(tmp_path / picture).size[0] > 300


def test_label_shift_of_the_transfer_labels_against_the_eval_split(tmp_path):
    """Per-class pixel shares counted independently of the module; the distance is half their L1 gap; the
    report shows the section for the datasets its runs' manifests name."""
    from tst.collect.dataset import FrameDataset
    from tst.transfer.label_shift import measure

    collect_small(tmp_path, 0, 3, 3, 32)
    root = tmp_path / "procedural-0" / "data"
    shift = measure(root, root)
    for split, shares in (("eval", shift.eval_shares), ("transfer", shift.transfer_shares)):
        labels = np.concatenate([sample["semantic"].numpy().ravel() for sample in FrameDataset(root, split, ["semantic"])])
        counts = np.bincount(labels[labels > 0], minlength=len(shift.names)).astype(float)
        np.testing.assert_allclose(shares, counts / counts.sum())
    assert shift.distance == pytest.approx(0.5 * np.abs(shift.eval_shares - shift.transfer_shares).sum())
    assert 0 < shift.distance <= 1  # another apartment's frames hold another class mix
    top = shift.largest_differences(3)
    gaps = np.abs(shift.eval_shares - shift.transfer_shares)
    assert gaps[top[0]] == gaps[1:].max() and list(gaps[top]) == sorted(gaps[top], reverse=True)

    run_dir = tmp_path / "procedural-0" / "transfer" / "scratch-s0"
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / "metrics.json", {"backbone": "scratch", "fraction": 1.0, "seed": 0, "seg_miou": 0.1})
    write_manifest(run_dir, "transfer", {}, {"dataset": root}, {"metrics": "metrics.json"})
    assert main(["report", f"workspace_dir={tmp_path}", "tracking.enabled=false"]) == 0
    text = (tmp_path / "procedural-0" / "report" / "results.md").read_text()
    assert "## Label shift" in text and f"**{shift.distance:.3f}**" in text
    assert f"| {shift.names[top[0]]} | {100 * shift.eval_shares[top[0]]:.1f} |" in text

    shards = root / "transfer" / "semantic"  # a dataset whose transfer split is gone: the report still lands
    shards.rename(tmp_path / "moved")
    manifest = read_manifest(root)
    manifest["outputs"]["splits"]["transfer"]["frames"] = 0
    atomic_write_json(root / "manifest.json", manifest)
    assert main(["report", f"workspace_dir={tmp_path}", "tracking.enabled=false"]) == 0
    assert "## Label shift" not in (tmp_path / "procedural-0" / "report" / "results.md").read_text()
