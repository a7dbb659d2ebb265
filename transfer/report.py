"""`tst report`: the TST results table from the transfer runs tracked in MLflow.

Rows are backbones (scratch, mae, multimae, fourm, the generalists), columns the task metrics; a cell is
the mean ± std over every tracked run of that backbone (seeds) at the table's label fraction. Written into
<workspace>/<space>/report/: results.md, results.csv, results.png (bar chart), label_efficiency.png (when
several fractions were run) and qualitative.png (each backbone's eval predictions, stacked).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console

from tst.errors import TSTError
from tst.tracking import tracking_uri
from tst.workspace import atomic_write_bytes

from tst.envs.registry import space_name

console = Console(stderr=True)
ROW_ORDER = ["scratch", "mae", "multimae", "fourm", "generalist", "dinov2-s14", "dinov2-b14", "clip-b16", "4m21-b"]
COLUMNS = {"seg_miou": "seg mIoU", "det_map": "det mAP", "det_ap50": "det AP50", "caption_cider_d": "caption CIDEr-D"}


@dataclass
class TransferResult:
    """One tracked transfer run: its backbone, label fraction, seed, metrics and run folder."""

    backbone: str
    fraction: float
    seed: int
    metrics: dict[str, float]
    run_dir: Path | None = None
    space: str = ""


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    def text(self, scale: float) -> str:
        if not self.values:
            return "–"
        if len(self.values) == 1:
            return f"{self.mean * scale:.1f}"
        return f"{self.mean * scale:.1f} ± {self.std * scale:.1f}"


def tracked_results(cfg: DictConfig, space: str | None) -> list[TransferResult]:
    """Every finished transfer run in the workspace's MLflow store (of `space` when given)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    if mlflow.get_experiment_by_name(cfg.tracking.experiment) is None:
        return []
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list",
                              filter_string="tags.stage = 'transfer'")
    results = []
    for run in runs:
        tags = run.data.tags
        if "backbone" not in tags or (space and tags.get("space") != space):
            continue
        results.append(TransferResult(tags["backbone"], float(tags.get("fraction", 1.0)), int(tags.get("seed", 0)),
                                      dict(run.data.metrics), Path(tags["artifact_dir"]) if "artifact_dir" in tags
                                      else None, tags.get("space", "")))
    return results


def backbone_order(results: list[TransferResult]) -> list[str]:
    names = {r.backbone for r in results}
    return [n for n in ROW_ORDER if n in names] + sorted(names - set(ROW_ORDER))


def table(results: list[TransferResult], fraction: float) -> dict[str, dict[str, Cell]]:
    """backbone -> metric -> Cell over the runs at `fraction`."""
    rows: dict[str, dict[str, Cell]] = {}
    for name in backbone_order(results):
        rows[name] = {metric: Cell() for metric in COLUMNS}
        for r in results:
            if r.backbone == name and r.fraction == fraction:
                for metric in COLUMNS:
                    if metric in r.metrics:
                        rows[name][metric].values.append(r.metrics[metric])
    return {name: cells for name, cells in rows.items() if any(c.values for c in cells.values())}


def markdown(rows: dict[str, dict[str, Cell]], fraction: float, space: str) -> str:
    """The table as Markdown; every metric x100, as published tables show mIoU, mAP and CIDEr-D."""
    lines = [f"# TST results — {space}, transfer fraction {fraction:g}", "",
             "Mean ± std over seeds; metrics x100. The generalist row is EfficientNet-Lite0 (ImageNet-supervised), "
             "the offline stand-in for internet-pretrained generalists.", "",
             "| backbone | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(cells[m].text(100) for m in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: dict[str, dict[str, Cell]], fraction: float) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["backbone", "fraction"] + [f"{m}_{s}" for m in COLUMNS for s in ("mean", "std", "runs")])
    for name, cells in rows.items():
        writer.writerow([name, fraction] + [v for m in COLUMNS for v in
                                            ((f"{cells[m].mean:.6f}", f"{cells[m].std:.6f}", len(cells[m].values))
                                             if cells[m].values else ("", "", 0))])
    return out.getvalue()


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def bar_chart(rows: dict[str, dict[str, Cell]], fraction: float) -> bytes:
    """One group of bars per metric, one bar per backbone, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in COLUMNS if any(cells[m].values for cells in rows.values())]
    figure, axis = plt.subplots(figsize=(1.8 + 1.6 * len(metrics), 3.4))
    width = 0.8 / max(1, len(rows))
    for k, (name, cells) in enumerate(rows.items()):
        x = np.arange(len(metrics)) + k * width
        axis.bar(x, [cells[m].mean * 100 if cells[m].values else 0 for m in metrics], width,
                 yerr=[cells[m].std * 100 for m in metrics], label=name, capsize=2)
    axis.set_xticks(np.arange(len(metrics)) + width * (len(rows) - 1) / 2, [COLUMNS[m] for m in metrics])
    axis.set_ylabel("score x100")
    axis.set_title(f"TST transfer results (fraction {fraction:g})")
    axis.legend(fontsize=8)
    data = _png(figure)
    plt.close(figure)
    return data


def label_efficiency(results: list[TransferResult]) -> bytes:
    """Each headline metric against the label fraction (log x), one line per backbone, std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = sorted({r.fraction for r in results})
    metrics = [m for m in COLUMNS if m != "det_ap50" and any(m in r.metrics for r in results)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    colours = {name: f"C{k}" for k, name in enumerate(backbone_order(results))}
    for axis, metric in zip(axes[0], metrics):
        for name in backbone_order(results):
            cells = [table([r for r in results if r.backbone == name], f).get(name, {}).get(metric, Cell())
                     for f in fractions]
            points = [(f, c) for f, c in zip(fractions, cells) if c.values]
            if points:
                axis.errorbar([f for f, _ in points], [c.mean * 100 for _, c in points],
                              yerr=[c.std * 100 for _, c in points], marker="o", capsize=2, color=colours[name])
        axis.set_xscale("log")
        axis.set_xlabel("fraction of transfer labels")
        axis.set_title(COLUMNS[metric])
    axes[0][0].set_ylabel("score x100")
    figure.legend(handles=[plt.Line2D([], [], color=c, marker="o", label=n) for n, c in colours.items()],
                  loc="upper center", ncol=len(colours), fontsize=8, bbox_to_anchor=(0.5, 1.08))
    data = _png(figure)
    plt.close(figure)
    return data


def qualitative(results: list[TransferResult], fraction: float) -> bytes | None:
    """Each backbone's predictions.png (eval rgb, truth and prediction per task, same eval frames for all
    runs) stacked under a title, one run per backbone (the lowest seed)."""
    sections = []
    for name in backbone_order(results):
        runs = sorted((r for r in results if r.backbone == name and r.fraction == fraction and r.run_dir
                       and (r.run_dir / "predictions.png").is_file()), key=lambda r: r.seed)
        if runs:
            sections.append((name, Image.open(runs[0].run_dir / "predictions.png").convert("RGB")))
    if not sections:
        return None
    title = 16
    width = max(image.width for _, image in sections)
    sheet = Image.new("RGB", (width, sum(image.height + title for _, image in sections)), "white")
    draw, y = ImageDraw.Draw(sheet), 0
    for name, image in sections:
        draw.text((4, y + 2), f"backbone: {name}", fill="black", font=ImageFont.load_default())
        sheet.paste(image, (0, y + title))
        y += image.height + title
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def report(cfg: DictConfig) -> Path:
    """Write the report files; print the Markdown table. Returns the report folder."""
    space = space_name(cfg.space)
    results = tracked_results(cfg, space)
    if not results:
        raise TSTError(f"{tracking_uri(cfg)}: no tracked transfer runs of space {space}; run tst transfer first")
    fractions = sorted({r.fraction for r in results})
    fraction = float(cfg.report.fraction) if cfg.report.get("fraction") is not None else max(fractions)
    rows = table(results, fraction)
    if not rows:
        raise TSTError(f"report.fraction: no transfer runs at fraction {fraction:g}; runs exist at "
                       f"{', '.join(f'{f:g}' for f in fractions)}")
    out = Path(str(cfg.report.out)) if cfg.report.get("out") else Path(cfg.workspace_dir) / space / "report"
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, fraction, space)
    atomic_write_bytes(out / "results.md", text.encode())
    atomic_write_bytes(out / "results.csv", csv_text(rows, fraction).encode())
    atomic_write_bytes(out / "results.png", bar_chart(rows, fraction))
    if len(fractions) > 1:
        atomic_write_bytes(out / "label_efficiency.png", label_efficiency(results))
    pictures = qualitative(results, fraction)
    if pictures:
        atomic_write_bytes(out / "qualitative.png", pictures)
    print(text)
    console.print(f"report written to {out}")
    return out
