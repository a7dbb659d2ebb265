"""`tst report` from a small MLflow store created here."""

import csv

import numpy as np
import pytest
from PIL import Image

from tst.cli import main
from tst.config import load
from tst.tracking import record_run


def _track(workspace, backbone, fraction, seed, metrics):
    cfg = load("transfer", [f"workspace_dir={workspace}"])
    run_dir = workspace / "procedural-0" / "transfer" / f"{backbone}-{fraction}-{seed}"
    run_dir.mkdir(parents=True)
    Image.fromarray(np.full((40, 120, 3), 40 * seed, np.uint8)).save(run_dir / "predictions.png")
    record_run(cfg, "transfer", "procedural-0", run_dir, {}, {}, metrics, tags={
        "task": "seg+det+caption", "backbone": backbone, "objective": backbone, "fraction": str(fraction),
        "seed": str(seed)})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("report")
    for seed, miou in ((0, 0.30), (1, 0.34)):
        _track(workspace, "fourm", 1.0, seed, {"seg_miou": miou, "det_map": 0.2, "det_ap50": 0.4,
                                               "caption_cider_d": 0.5})
    _track(workspace, "scratch", 1.0, 0, {"seg_miou": 0.1, "det_map": 0.05, "det_ap50": 0.1, "caption_cider_d": 0.2})
    _track(workspace, "fourm", 0.1, 0, {"seg_miou": 0.2})
    _track(workspace, "generalist", 1.0, 0, {"seg_miou": 0.25})
    return workspace


def test_report_table_charts_and_pictures(store, capsys):
    assert main(["report", f"workspace_dir={store}"]) == 0
    out = store / "procedural-0" / "report"
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "backbone" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["scratch", "fourm", "generalist"]
    assert "32.0 ± 2.8" in rows[1]  # mean and sample std of 0.30 and 0.34, x100
    assert rows[2].count("–") == 3  # the generalist has no det/caption runs
    with open(out / "results.csv") as handle:
        records = {r["backbone"]: r for r in csv.DictReader(handle)}
    assert float(records["fourm"]["seg_miou_mean"]) == pytest.approx(0.32) and records["fourm"]["seg_miou_runs"] == "2"
    for picture in ("results.png", "label_efficiency.png", "qualitative.png"):
        assert Image.open(out / picture).size[0] > 100
    assert "TST results" in capsys.readouterr().out


def test_report_at_a_chosen_fraction(store, capsys):
    assert main(["report", f"workspace_dir={store}", "report.fraction=0.1", f"report.out={store / 'r01'}"]) == 0
    table = (store / "r01" / "results.md").read_text()
    assert "fraction 0.1" in table and "| fourm | 20.0 |" in table and "scratch" not in table


def test_report_without_runs_says_so(tmp_path, capsys):
    assert main(["report", f"workspace_dir={tmp_path}"]) != 0
    assert "no tracked transfer runs" in capsys.readouterr().err
