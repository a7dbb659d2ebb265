"""`tst report`: the TST results table from the finished transfer run folders of the workspace (their
metrics.json; MLflow, when tracking is on, shows the same runs but is not read).

Rows are backbones (scratch, mae, multimae, fourm, the generalists), columns the task metrics; a cell is
the mean ± sample std over every finished run of that backbone (seeds) at the table's label fraction. A
pretrained backbone run at several pretraining lengths (`pretrain_steps` in metrics.json) enters the
table with its longest one only. A cell that differs from the scratch cell of its column by more than 2σ (σ = the larger
of the two cells' seed std) is marked `*`; under the table one line per column names its winner and
whether its lead is beyond noise. Because one seed draws the same labelled subset for every backbone, a
second table pairs each backbone with scratch seed by seed (mean difference, paired t-test, `†` at
p < 0.05): the test that seed-to-seed swings shared by all backbones cannot drown.

Written into <workspace>/<space>/report/, its manifest.json last (naming the run folders read):
results.md, results.csv, results.png (bar chart), label_efficiency.png (when several fractions were run),
pretrain_length.png (when a backbone was run at several pretraining lengths), qualitative.png (each
backbone's eval predictions, stacked), specialization.png when the transfers were also scored on
held-out spaces (tst.transfer.specialization), and tradeoff.png and data_worth.png when backbones were
pretrained on other spaces' frames too (tst.transfer.pretraining_data). results.md also holds those
analyses' tables, the frozen-feature probe table of <workspace>/<space>/probe, the label shift between the
transfer labels and the eval split (tst.transfer.label_shift) and the tokenizer quality table of
<workspace>/<space>/pretrain/tokenizers.
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
from tst.workspace import MANIFEST, artifact_dir, atomic_write_bytes, read_json, read_manifest, write_manifest

from tst.envs.registry import space_name
from tst.pretrain.objectives import OBJECTIVES
from tst.transfer.foreign_weights import FOREIGN_SPECS

console = Console(stderr=True)
# Table rows: scratch, the test-space objectives, adapted TST (4M-21 continued on the space), the generalists
# (the offline one, then every published one).
ROW_ORDER = ["scratch", *reversed(OBJECTIVES), "adapted", "generalist", *FOREIGN_SPECS]
COLUMNS = {"seg_miou": "seg mIoU", "det_map": "det mAP", "det_ap50": "det AP50", "caption_cider_d": "caption CIDEr-D"}
HEADLINE = [m for m in COLUMNS if m != "det_ap50"]  # one per task: the curves' panels
REFERENCE = "scratch"  # the row every other row is tested against
MARKER = "*"
PAIRED_MARKER = "†"
PAIRED_ALPHA = 0.05  # two-sided significance level of the paired t-test
SCALE = 100  # every metric x100, as published tables show mIoU, mAP and CIDEr-D


@dataclass
class TransferResult:
    """One finished transfer run: its backbone, label fraction, seed, metrics, run folder, and the length
    of the pretraining its backbone had (None for scratch, the generalists and runs that do not record it)."""

    backbone: str
    fraction: float
    seed: int
    metrics: dict[str, float]
    run_dir: Path | None = None
    space: str = ""
    pretrain_steps: int | None = None
    held_out: dict[str, dict[str, float]] = field(default_factory=dict)  # space -> metrics (transfer.held_out)
    pretrain_data: dict | None = None  # how its pretraining drew frames (tst.pretrain.data.pretraining_data)


@dataclass
class Cell:
    """The runs of one backbone on one metric: values[i] came from seed seeds[i] (seeds may be empty when
    unknown, e.g. in cells built by hand)."""

    values: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    def by_seed(self) -> dict[int, float]:
        """seed -> the mean of that seed's values."""
        grouped: dict[int, list[float]] = {}
        for seed, value in zip(self.seeds, self.values):
            grouped.setdefault(seed, []).append(value)
        return {seed: float(np.mean(values)) for seed, values in grouped.items()}

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    def text(self, scale: float, marker: str = "") -> str:
        if not self.values:
            return "–"
        body = f"{self.mean * scale:.1f}"
        if len(self.values) > 1:
            body += f" ± {self.std * scale:.1f}"
        return f"{body} {marker}" if marker else body


@dataclass
class Gap:
    """The difference of two cells' means and the noise it is judged against: 2σ, σ the larger of the
    two seed stds; sigma is None when either cell rests on one seed (no std, so no verdict)."""

    gap: float
    sigma: float | None

    @property
    def significant(self) -> bool:
        return self.sigma is not None and abs(self.gap) > 2 * self.sigma

    def text(self, scale: float) -> str:
        """e.g. 'gap 3.3, 2σ = 1.2: significant' or 'gap 3.3, single seed: within noise'."""
        noise = "single seed" if self.sigma is None else f"2σ = {2 * self.sigma * scale:.1f}"
        verdict = "significant" if self.significant else "within noise"
        return f"gap {self.gap * scale:.1f}, {noise}: {verdict}"


def compare(cell: Cell, other: Cell) -> Gap:
    """cell - other, judged against the larger seed std of the two (both cells must have values)."""
    sigma = max(cell.std, other.std) if min(len(cell.values), len(other.values)) > 1 else None
    return Gap(cell.mean - other.mean, sigma)


@dataclass
class Paired:
    """Per-seed differences of one cell to the reference cell of its column, over the seeds both share.
    A transfer seed fixes the labelled subset and the head's initialization for every backbone, so the
    backbones of one seed share most of their noise: differences within a seed cancel it, and a paired
    t-test over them is far more sensitive than comparing the two cells' spreads."""

    differences: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.differences))

    @property
    def std(self) -> float:
        return float(np.std(self.differences, ddof=1))

    @property
    def p_value(self) -> float:
        """Two-sided one-sample t-test of the differences against 0 (df = seeds - 1)."""
        if self.std < 1e-12:  # equal differences (up to rounding): no spread for a t statistic
            return 1.0 if abs(self.mean) < 1e-12 else 0.0
        from scipy.stats import ttest_1samp

        return float(ttest_1samp(self.differences, 0.0).pvalue)

    @property
    def significant(self) -> bool:
        return self.p_value < PAIRED_ALPHA

    def text(self, scale: float) -> str:
        """e.g. '+0.8 ± 0.3 (3 seeds, p = 0.050) †'."""
        body = (f"{self.mean * scale:+.1f} ± {self.std * scale:.1f} ({len(self.differences)} seeds, "
                f"p = {self.p_value:.3f})")
        return f"{body} {PAIRED_MARKER}" if self.significant else body


def paired(cell: Cell, reference: Cell) -> Paired | None:
    """cell - reference seed by seed; None when they share fewer than two seeds."""
    mine, theirs = cell.by_seed(), reference.by_seed()
    shared = sorted(set(mine) & set(theirs))
    return Paired([mine[s] - theirs[s] for s in shared]) if len(shared) > 1 else None


def folder_results(cfg: DictConfig, space: str) -> list[TransferResult]:
    """Every finished transfer run folder of `space` in the workspace (its metrics.json). The folders are
    the source of truth whether or not tracking is on: MLflow shows the runs, but a run deleted from the
    workspace must leave the table too, and a workspace run with tracking.enabled=false has no store."""
    results = []
    folder = artifact_dir(cfg.workspace_dir, space, "transfer")
    for unfinished in sorted(p for p in folder.glob("*/metrics.json") if not (p.parent / MANIFEST).is_file()):
        console.print(f"[yellow]skipped[/yellow] {unfinished.parent}: no {MANIFEST}, so not a finished transfer run")
    for metrics_file in sorted(folder.glob(f"*/{MANIFEST}")):
        run_dir = metrics_file.parent
        m = read_json(run_dir / "metrics.json", "the metrics a transfer run writes")
        if not isinstance(m, dict) or not {"backbone", "fraction", "seed"} <= set(m):
            raise TSTError(f"{run_dir / 'metrics.json'}: expected the metrics a transfer run writes "
                           "(backbone, fraction, seed and scores)")
        scores = {k: float(v) for k, v in m.items() if k in COLUMNS and isinstance(v, (int, float))}
        held_out = {str(where): {k: float(v) for k, v in values.items() if k in COLUMNS}
                    for where, values in (m.get("held_out") or {}).items()}
        steps = m.get("pretrain_steps")
        results.append(TransferResult(str(m["backbone"]), float(m["fraction"]), int(m["seed"]), scores, run_dir,
                                      space, int(steps) if steps is not None else None, held_out,
                                      m.get("pretrain_data")))
    return results


def backbone_order(results: list[TransferResult]) -> list[str]:
    """Table rows: scratch, the objectives, adapted and the generalists (ROW_ORDER), then every other row
    (a variant) in the order its results come; report() sorts them by `report.rows`."""
    names = list(dict.fromkeys(r.backbone for r in results))
    return [n for n in ROW_ORDER if n in names] + [n for n in names if n not in ROW_ORDER]


def in_row_order(results: list[TransferResult], rows: list[str]) -> list[TransferResult]:
    """The results with the rows not in ROW_ORDER (variants) in `rows`' order, any others after them
    alphabetically; a backbone's own results keep their order."""
    rank = {name: k for k, name in enumerate(rows)}
    return sorted(results, key=lambda r: (rank.get(r.backbone, len(rank)), r.backbone))


def seeds_caption(results: list[TransferResult]) -> str:
    """'seeds 0, 1, 2', plus the backbones resting on one seed: every figure names its seeds."""
    seeds = ", ".join(str(s) for s in sorted({r.seed for r in results}))
    single = [name for name in backbone_order(results) if len({r.seed for r in results if r.backbone == name}) == 1]
    return f"seeds {seeds}" + (f"; one seed only: {', '.join(single)}" if single else "")


# Pretraining length ------------------------------------------------------------------------------------

def pretraining_lengths(results: list[TransferResult], fraction: float) -> dict[str, list[int | None]]:
    """backbone -> the distinct pretrain_steps of its runs at `fraction` (None: untagged), for every
    backbone with at least one tagged run; longest last."""
    lengths: dict[str, set[int | None]] = {}
    for r in results:
        if r.fraction == fraction:
            lengths.setdefault(r.backbone, set()).add(r.pretrain_steps)
    return {name: sorted(steps, key=lambda s: -1 if s is None else s)
            for name, steps in lengths.items() if steps - {None}}


def at_longest_pretraining(results: list[TransferResult], fraction: float) -> list[TransferResult]:
    """The runs of each pretrained backbone at its longest pretraining (at `fraction`), so no row or curve
    mixes pretraining lengths; backbones without the tag are kept whole."""
    longest = {name: steps[-1] for name, steps in pretraining_lengths(results, fraction).items()}
    return [r for r in results if r.backbone not in longest or r.pretrain_steps == longest[r.backbone]]


def length_notes(results: list[TransferResult], fraction: float) -> list[str]:
    """One line per backbone run at several pretraining lengths: which length the table shows."""
    notes = []
    for name, steps in pretraining_lengths(results, fraction).items():
        if len(steps) > 1:
            others = ", ".join("untagged" if s is None else str(s) for s in steps[:-1])
            notes.append(f"{name}: the table uses its runs at its longest pretraining, {steps[-1]} steps "
                         f"(also run: {others}; see pretrain_length.png).")
    return notes


# Tables -------------------------------------------------------------------------------------------------

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
                        rows[name][metric].seeds.append(r.seed)
    return {name: cells for name, cells in rows.items() if any(c.values for c in cells.values())}


def versus_reference(rows: dict[str, dict[str, Cell]], name: str, metric: str) -> Gap | None:
    """The gap of rows[name][metric] to the scratch cell of the column; None for the scratch row itself or
    when either cell is empty."""
    cell, reference = rows[name][metric], rows.get(REFERENCE, {}).get(metric, Cell())
    if name == REFERENCE or not cell.values or not reference.values:
        return None
    return compare(cell, reference)


def paired_versus_reference(rows: dict[str, dict[str, Cell]], name: str, metric: str) -> Paired | None:
    """rows[name][metric] - the scratch cell, seed by seed; None for scratch itself or under two shared seeds."""
    if name == REFERENCE or REFERENCE not in rows:
        return None
    return paired(rows[name][metric], rows[REFERENCE][metric])


def paired_markdown(rows: dict[str, dict[str, Cell]]) -> str | None:
    """The table of per-seed differences to scratch (mean ± std, seeds, p) with its legend; None when no
    row shares two seeds with scratch."""
    cells = {name: {m: paired_versus_reference(rows, name, m) for m in COLUMNS} for name in rows}
    cells = {name: row for name, row in cells.items() if any(row.values())}
    if not cells:
        return None
    lines = [f"## Paired by seed, against {REFERENCE}", "",
             f"Per seed, the backbone's score minus {REFERENCE}'s (the same seed draws the same labelled "
             "subset and head initialization for every backbone); mean ± sample std of those differences "
             f"over the seeds both rows share, and the two-sided paired t-test's p. {PAIRED_MARKER}: "
             f"p < {PAIRED_ALPHA:g}.", "",
             "| backbone | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in cells.items():
        lines.append(f"| {name} | " + " | ".join(d.text(SCALE) if d else "–" for d in row.values()) + " |")
    return "\n".join(lines) + "\n"


def marker(rows: dict[str, dict[str, Cell]], name: str, metric: str) -> str:
    gap = versus_reference(rows, name, metric)
    return MARKER if gap is not None and gap.significant else ""


def winner_line(rows: dict[str, dict[str, Cell]], metric: str) -> str | None:
    """'seg mIoU: fourm wins (21.3 vs next best multimae 18.0; gap 3.3, 2σ = 1.2: significant)'; None for
    a column without runs."""
    ranked = sorted(((cells[metric], name) for name, cells in rows.items() if cells[metric].values),
                    key=lambda pair: -pair[0].mean)
    if not ranked:
        return None
    (best, winner), label = ranked[0], COLUMNS[metric]
    if len(ranked) == 1:
        return f"{label}: {winner} is the only backbone with runs ({best.mean * SCALE:.1f})."
    second, runner_up = ranked[1]
    return (f"{label}: {winner} wins ({best.mean * SCALE:.1f} vs next best {runner_up} "
            f"{second.mean * SCALE:.1f}; {compare(best, second).text(SCALE)}).")


def single_seed_rows(rows: dict[str, dict[str, Cell]]) -> list[str]:
    """The rows with a cell resting on one run: no std there, so no verdict against (or by) them."""
    return [name for name, cells in rows.items() if any(len(c.values) == 1 for c in cells.values())]


def marker_note(rows: dict[str, dict[str, Cell]]) -> str:
    """The line under the table that explains the marker and says which rows rest on one seed."""
    if REFERENCE in rows:
        note = (f"{MARKER}: differs from the {REFERENCE} cell of its column by more than 2σ, σ the larger of the "
                "two cells' seed std (the means give the direction).")
    else:
        note = f"No {REFERENCE} row at this fraction: no cell is marked."
    single = [name for name in single_seed_rows(rows) if name != REFERENCE]
    if single:
        note += f" Rows resting on one seed (no std, so those cells get no marker): {', '.join(single)}."
    lone = [label for m, label in COLUMNS.items() if len(rows.get(REFERENCE, {}).get(m, Cell()).values) == 1]
    if lone:
        note += f" {REFERENCE} rests on one seed in {', '.join(lone)}: no cell of those columns can be marked."
    return note


def markdown(rows: dict[str, dict[str, Cell]], fraction: float, space: str, used: list[TransferResult],
             notes: list[str] = ()) -> str:
    """The table as Markdown (metrics x100), the marker's legend, one winner line per column and `notes`;
    `used` are the runs the table rests on (for its seeds)."""
    generalist = (" The generalist row is EfficientNet-Lite0 (ImageNet-supervised), the offline stand-in for "
                  "internet-pretrained generalists.") if "generalist" in rows else ""
    lines = [f"# TST results — {space}, transfer fraction {fraction:g}", "",
             f"Mean ± sample std over seeds ({seeds_caption(used)}); metrics x100.{generalist}",
             "", "| backbone | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(cells[m].text(SCALE, marker(rows, name, m)) for m in COLUMNS) + " |")
    lines += ["", marker_note(rows), ""]
    lines += [f"- {line}" for line in (winner_line(rows, m) for m in COLUMNS) if line]
    if notes:
        lines += [""] + list(notes)
    text = "\n".join(lines) + "\n"
    pairs = paired_markdown(rows)
    return text + ("\n" + pairs if pairs else "")


def csv_text(rows: dict[str, dict[str, Cell]], fraction: float) -> str:
    """One line per backbone: per metric its mean, std, run count, verdict against scratch (significant /
    within noise / single seed; empty for scratch itself or an empty cell), and the paired comparison to
    scratch: mean per-seed difference and its t-test p (empty under two shared seeds)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["backbone", "fraction"] + [f"{m}_{s}" for m in COLUMNS for s in (
        "mean", "std", "runs", "vs_scratch", "paired_difference", "paired_p")])
    for name, cells in rows.items():
        values = []
        for m in COLUMNS:
            cell, gap = cells[m], versus_reference(rows, name, m)
            verdict = "" if gap is None else "single seed" if gap.sigma is None else \
                "significant" if gap.significant else "within noise"
            pair = paired_versus_reference(rows, name, m)
            values += [f"{cell.mean:.6f}", f"{cell.std:.6f}", len(cell.values), verdict] if cell.values \
                else ["", "", 0, ""]
            values += [f"{pair.mean:.6f}", f"{pair.p_value:.6f}"] if pair else ["", ""]
        writer.writerow([name, fraction] + values)
    return out.getvalue()


def tokenizer_quality(directory: Path) -> str | None:
    """The tokenizer quality table (Markdown) of the manifest `tst pretrain tokenizers` wrote in
    `directory` (outputs.quality, see tst.pretrain.tokenizer_quality); None without one."""
    if not (Path(directory) / MANIFEST).is_file():
        return None
    quality = read_manifest(directory).get("outputs", {}).get("quality")
    if not quality:
        return None
    first = next(iter(quality.values()))
    lines = ["## Tokenizers", "",
             f"Over the {first['split']} split ({first['patches']} patches per modality); errors in reader units, "
             "the baseline replaces every patch by its mean.", "",
             "| modality | codes used / codebook (share %) | perplexity | error | patch-mean baseline "
             "| beats baseline |",
             "|---|---|---|---|---|---|"]
    for name, q in quality.items():
        share = 100 * q["codes_used"] / max(1, q["codebook"])
        lines.append(f"| {name} | {q['codes_used']} / {q['codebook']} ({share:.0f}%) | {q['perplexity']:.1f} | "
                     f"{q['error']:.4f} ({q['metric']}) | {q['baseline_error']:.4f} | "
                     f"{'yes' if q['error'] < q['baseline_error'] else 'no'} |")
    return "\n".join(lines) + "\n"


PROBE_COLUMNS = {"test_space": "test space", "in_domain": "in-domain (held-out transfer frames)"}


def probe_table(folder: Path, rows: list[str]) -> str | None:
    """The frozen-feature probe table (Markdown) of the finished `tst transfer probe` runs in `folder`
    (<space>/probe), one row per backbone (ordered as `rows`, others after), cells mean ± std over seeds of
    patch mIoU; None without runs."""
    from tst.workspace import read_json

    runs: dict[str, dict[str, Cell]] = {}
    for manifest in sorted(Path(folder).glob(f"*/{MANIFEST}")):
        result = read_json(manifest.parent / "probe.json", "the result of tst transfer probe")
        cells = runs.setdefault(str(result["backbone"]), {key: Cell() for key in (*PROBE_COLUMNS, "gap")})
        for key in PROBE_COLUMNS:
            cells[key].values.append(float(result[key]["patch_miou"]))
        cells["gap"].values.append(float(result["gap"]))
    if not runs:
        return None
    lines = ["## Frozen-feature probe", "",
             "Ridge regression from each backbone's frozen patch features to patch classes, fitted on the even "
             "transfer frames (other spaces); patch mIoU x100 on the odd transfer frames (in-domain) and on the "
             "test space's eval split. The gap is what the test space costs; pretraining on the test space should "
             "shrink it.", "",
             "| backbone | " + " | ".join(PROBE_COLUMNS.values()) + " | gap |", "|---|---|---|---|"]
    for name in [n for n in rows if n in runs] + sorted(set(runs) - set(rows)):
        lines.append(f"| {name} | " + " | ".join(runs[name][key].text(SCALE) for key in (*PROBE_COLUMNS, "gap")) + " |")
    return "\n".join(lines) + "\n"


def label_shift_sections(used: list[TransferResult]) -> str | None:
    """The label-shift section (tst.transfer.label_shift) of each (eval dataset, transfer dataset) pair the
    runs in `used` read, as their manifests name them; pairs without labels to count are passed over."""
    from tst.transfer.label_shift import has_labels, markdown, measure

    pairs = []
    for result in used:
        inputs = read_manifest(result.run_dir).get("inputs", {}) if result.run_dir else {}
        dataset = (inputs.get("dataset") or {}).get("path")
        source = (inputs.get("transfer_data") or {}).get("path") or dataset
        pair = (Path(dataset), Path(source)) if dataset else None
        if pair and pair not in pairs and has_labels(pair[0], "eval") and has_labels(pair[1], "transfer"):
            pairs.append(pair)
    return "\n".join(markdown(measure(*pair), *pair) for pair in pairs) or None


# Figures ------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def _colours(results: list[TransferResult]) -> dict[str, str]:
    """backbone -> matplotlib colour, in table order (the bar chart's colours)."""
    return {name: f"C{k}" for k, name in enumerate(backbone_order(results))}


def _legend(figure, colours: dict[str, str], dashed: tuple[str, ...] = ()) -> None:
    """One entry per backbone above the panels; those in `dashed` drawn as dashed lines (a reference)."""
    plt = _pyplot()
    handles = [plt.Line2D([], [], color=c, label=n, **({"linestyle": "--"} if n in dashed else {"marker": "o"}))
               for n, c in colours.items()]
    figure.legend(handles=handles, loc="upper center", ncol=len(colours), fontsize=8, bbox_to_anchor=(0.5, 1.08))


def _panels(metrics: list[str], title: str):
    figure, axes = _pyplot().subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    figure.suptitle(title, y=1.15, fontsize=10)
    for axis, metric in zip(axes[0], metrics):
        axis.set_title(COLUMNS[metric])
    axes[0][0].set_ylabel(f"score x{SCALE}")
    return figure, axes[0]


def _curve(axis, points: list[tuple[float, Cell]], colour: str) -> None:
    """Mean ± std of the non-empty cells against x."""
    points = [(x, c) for x, c in points if c.values]
    if points:
        axis.errorbar([x for x, _ in points], [c.mean * SCALE for _, c in points],
                      yerr=[c.std * SCALE for _, c in points], marker="o", capsize=2, color=colour)


def bar_chart(rows: dict[str, dict[str, Cell]], fraction: float, used: list[TransferResult]) -> bytes:
    """One group of bars per metric, one bar per backbone, std as error bars."""
    plt = _pyplot()
    metrics = [m for m in COLUMNS if any(cells[m].values for cells in rows.values())]
    figure, axis = plt.subplots(figsize=(1.8 + 1.6 * len(metrics), 3.4))
    width = 0.8 / max(1, len(rows))
    for k, (name, cells) in enumerate(rows.items()):
        x = np.arange(len(metrics)) + k * width
        axis.bar(x, [cells[m].mean * SCALE if cells[m].values else 0 for m in metrics], width,
                 yerr=[cells[m].std * SCALE for m in metrics], label=name, capsize=2)
    axis.set_xticks(np.arange(len(metrics)) + width * (len(rows) - 1) / 2, [COLUMNS[m] for m in metrics])
    axis.set_ylabel(f"score x{SCALE}")
    axis.set_title(f"TST transfer results (fraction {fraction:g})\n{seeds_caption(used)}", fontsize=10)
    axis.legend(fontsize=8)
    return _png(figure)


def label_efficiency(results: list[TransferResult]) -> bytes:
    """Each headline metric against the label fraction (log x), one line per backbone, std error bars."""
    fractions = sorted({r.fraction for r in results})
    metrics = [m for m in HEADLINE if any(m in r.metrics for r in results)]
    figure, axes = _panels(metrics, f"label efficiency ({seeds_caption(results)})")
    colours = _colours(results)
    for axis, metric in zip(axes, metrics):
        for name in colours:
            own = [r for r in results if r.backbone == name]
            _curve(axis, [(f, table(own, f).get(name, {}).get(metric, Cell())) for f in fractions], colours[name])
        axis.set_xscale("log")
        axis.set_xlabel("fraction of transfer labels")
    _legend(figure, colours)
    return _png(figure)


def pretrain_length(results: list[TransferResult], fraction: float) -> bytes | None:
    """Each headline metric against the pretraining steps, one line per pretrained backbone (mean ± std over
    seeds) and scratch as a dashed line; None unless some backbone was run at two lengths or more."""
    lengths = {name: [s for s in steps if s is not None]
               for name, steps in pretraining_lengths(results, fraction).items()}
    if not any(len(steps) > 1 for steps in lengths.values()):
        return None
    at_fraction = [r for r in results if r.fraction == fraction
                   and (r.backbone == REFERENCE or r.pretrain_steps is not None)]
    metrics = [m for m in HEADLINE if any(m in r.metrics for r in at_fraction)]
    figure, axes = _panels(metrics, f"pretraining length, transfer fraction {fraction:g} "
                                    f"({seeds_caption(at_fraction)})")
    colours = _colours(at_fraction)
    scratch = table([r for r in at_fraction if r.backbone == REFERENCE], fraction).get(REFERENCE)
    for axis, metric in zip(axes, metrics):
        for name in lengths:
            cells = [(s, table([r for r in at_fraction if r.backbone == name and r.pretrain_steps == s], fraction)
                      .get(name, {}).get(metric, Cell())) for s in lengths[name]]
            _curve(axis, cells, colours[name])
        if scratch and scratch[metric].values:  # scratch: its mean dashed, its std a band
            mean, std = scratch[metric].mean * SCALE, scratch[metric].std * SCALE
            axis.axhline(mean, color=colours[REFERENCE], linestyle="--")
            axis.axhspan(mean - std, mean + std, color=colours[REFERENCE], alpha=0.12, linewidth=0)
        axis.set_xticks(sorted({s for steps in lengths.values() for s in steps}))
        axis.set_xlabel("pretraining steps")
    _legend(figure, colours, dashed=(REFERENCE,))
    return _png(figure)


def qualitative(results: list[TransferResult], fraction: float) -> bytes | None:
    """Each backbone's predictions.png (eval rgb, truth and prediction per task, same eval frames for all
    runs) stacked under a title, one run per backbone (the lowest seed, named in the title)."""
    sections = []
    for name in backbone_order(results):
        runs = sorted((r for r in results if r.backbone == name and r.fraction == fraction and r.run_dir
                       and (r.run_dir / "predictions.png").is_file()), key=lambda r: r.seed)
        if runs:
            sections.append((f"backbone: {name}, seed {runs[0].seed}",
                             Image.open(runs[0].run_dir / "predictions.png").convert("RGB")))
    if not sections:
        return None
    title = 16
    width = max(image.width for _, image in sections)
    sheet = Image.new("RGB", (width, sum(image.height + title for _, image in sections)), "white")
    draw, y = ImageDraw.Draw(sheet), 0
    for caption, image in sections:
        draw.text((4, y + 2), caption, fill="black", font=ImageFont.load_default())
        sheet.paste(image, (0, y + title))
        y += image.height + title
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def report(cfg: DictConfig) -> Path:
    """Write the report files; print the Markdown. Returns the report folder."""
    from tst.transfer.pretraining_data import (data_worth_chart, data_worth_groups, data_worth_markdown,
                                               tradeoff_chart, tradeoff_groups, tradeoff_markdown)
    from tst.transfer.specialization import (cross_matrix_markdown, specialization_chart, specialization_markdown,
                                             specialization_table)

    space = space_name(cfg.space)
    every = in_row_order(folder_results(cfg, space), [str(name) for name in cfg.report.get("rows") or []])
    if not every:
        raise TSTError(f"{artifact_dir(cfg.workspace_dir, space, 'transfer')}: no finished transfer runs of "
                       f"space {space}; run tst transfer first")
    fractions = sorted({r.fraction for r in every})
    fraction = float(cfg.report.fraction) if cfg.report.get("fraction") is not None else max(fractions)
    results = at_longest_pretraining(every, fraction)
    rows = table(results, fraction)
    if not rows:
        raise TSTError(f"report.fraction: no transfer runs at fraction {fraction:g}; runs exist at "
                       f"{', '.join(f'{f:g}' for f in fractions)}")
    out = Path(str(cfg.report.out)) if cfg.report.get("out") else artifact_dir(cfg.workspace_dir, space, "report")
    out.mkdir(parents=True, exist_ok=True)
    used = [r for r in results if r.fraction == fraction]
    text = markdown(rows, fraction, space, used, length_notes(every, fraction))
    held_out = specialization_table(used, space)
    curves, worth = tradeoff_groups(used), data_worth_groups(used)
    sections = (specialization_markdown(held_out, space, used) if held_out else None,
                cross_matrix_markdown(held_out, space, used) if held_out else None,
                tradeoff_markdown(curves, used, space) if curves else None,
                data_worth_markdown(worth, used, space) if worth else None,
                probe_table(artifact_dir(cfg.workspace_dir, space, "probe"), list(rows)),
                label_shift_sections(used),
                tokenizer_quality(artifact_dir(cfg.workspace_dir, space, "pretrain", "tokenizers")))
    text += "".join("\n" + section for section in sections if section)
    files = {"results.md": text.encode(), "results.csv": csv_text(rows, fraction).encode(),
             "results.png": bar_chart(rows, fraction, used),
             "specialization.png": specialization_chart(held_out, space, used) if held_out else None,
             "tradeoff.png": tradeoff_chart(curves, used, space) if curves else None,
             "data_worth.png": data_worth_chart(worth, used, space) if worth else None,
             "label_efficiency.png": label_efficiency(results) if len(fractions) > 1 else None,
             "pretrain_length.png": pretrain_length(every, fraction),
             "qualitative.png": qualitative(results, fraction)}
    for name, content in files.items():
        if content:
            atomic_write_bytes(out / name, content)
        else:  # an earlier report's picture of runs this one does not show would mislead
            (out / name).unlink(missing_ok=True)
    write_manifest(out, "report", cfg, {r.run_dir.name: r.run_dir for r in every if r.run_dir},
                   {"fraction": fraction, "rows": list(rows), "files": [n for n, c in files.items() if c]})
    print(text)
    console.print(f"report written to {out}")
    return out
