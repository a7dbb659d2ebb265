"""The pretraining-data analyses of `tst report`: how much the test space's own frames are worth, from how
each transfer run's backbone drew its pretraining frames (metrics.json `pretrain_data`, written from the
pretraining config by tst.pretrain.data.pretraining_data).

- Trade-off (experiment=tradeoff): one objective pretrained on a fixed number of frames, a share of them
  from the test space and the rest from other spaces (pretrain.external). A run with a share strictly
  between 0 and 1 marks the analysis; its curve holds every run of that objective and frame budget. Per
  backbone: the test-space score and, when the heads were also scored on held-out spaces, their mean.
  tradeoff.png draws both against the share.
- Data worth (experiment=data-worth): one objective pretrained on other spaces only (share 0), on 1, 2,
  4, ... of them with the same frames per space: the test-space score against their number, with the same
  objective pretrained on the test space alone as level lines (one per frame budget): how many other
  spaces the test space's frames are worth. data_worth.png.

Scratch is a dashed level line in both figures and the last row of both tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tst.transfer.report import (COLUMNS, HEADLINE, REFERENCE, SCALE, Cell, TransferResult, _panels, _png,
                                 seeds_caption)

Group = dict[str, list[TransferResult]]  # backbone -> its runs (one pretraining recipe each)


def score(runs: list[TransferResult], metric: str, held_out: bool = False) -> Cell:
    """`metric` of `runs` over their seeds: on the test space, or (held_out) each run's mean over the
    held-out spaces it was scored on."""
    cell = Cell()
    for r in runs:
        values = [s[metric] for s in r.held_out.values() if metric in s] if held_out else \
            ([r.metrics[metric]] if metric in r.metrics else [])
        if values:
            cell.values.append(float(np.mean(values)))
            cell.seeds.append(r.seed)
    return cell


def _by_backbone(runs: list[TransferResult]) -> Group:
    group: Group = {}
    for r in runs:
        group.setdefault(r.backbone, []).append(r)
    return group


def _data(runs: list[TransferResult]) -> dict:
    return runs[0].pretrain_data or {}


def space_names(entries: list[str]) -> str:
    """pretrain.external's folders as space names (<workspace>/<space>/data -> <space>)."""
    return ", ".join(Path(e).parent.name if Path(e).name == "data" else e for e in entries) or "–"


def tradeoff_groups(results: list[TransferResult]) -> dict[str, Group]:
    """A curve title ("<objective>, <frames> frames") -> its backbones, each a share of one frame budget;
    one curve per objective and budget that has a mixed run (0 < share < 1)."""
    keys = {(d["objective"], d["frames"]) for d in (r.pretrain_data for r in results)
            if d and 0 < d["test_space_share"] < 1}
    curves = {}
    for objective, frames in sorted(keys, key=str):
        runs = [r for r in results if r.pretrain_data and r.pretrain_data["objective"] == objective
                and r.pretrain_data["frames"] == frames]
        group = _by_backbone(runs)
        ordered = sorted(group, key=lambda name: -_data(group[name])["test_space_share"])
        title = f"{objective}, {frames if frames is not None else 'all test-space'} frames"
        curves[title] = {name: group[name] for name in ordered}
    return curves


def data_worth_groups(results: list[TransferResult]) -> dict[str, tuple[Group, Group]]:
    """objective -> (its backbones pretrained on other spaces only, by their number; its backbones
    pretrained on the test space alone), for each objective pretrained on at least two numbers of other
    spaces."""
    out = {}
    for objective in sorted({r.pretrain_data["objective"] for r in results if r.pretrain_data}):
        mine = [r for r in results if r.pretrain_data and r.pretrain_data["objective"] == objective]
        external = _by_backbone([r for r in mine if r.pretrain_data["test_space_share"] == 0])
        if len({len(_data(runs)["external"]) for runs in external.values()}) < 2:
            continue
        own = _by_backbone([r for r in mine if r.pretrain_data["test_space_share"] == 1])
        out[objective] = ({name: external[name] for name in sorted(external, key=lambda n: len(_data(external[n])
                                                                                                ["external"]))}, own)
    return out


def _scratch(results: list[TransferResult]) -> list[TransferResult]:
    return [r for r in results if r.backbone == REFERENCE]


def _metrics(results: list[TransferResult]) -> list[str]:
    """The headline metrics some run scored (a seg-only experiment has one)."""
    return [m for m in HEADLINE if any(m in r.metrics for r in results)]


def tradeoff_markdown(curves: dict[str, Group], results: list[TransferResult], test_space: str) -> str:
    held = any(r.held_out for group in curves.values() for runs in group.values() for r in runs)
    lines = ["## Trade-off: the test space's share of the pretraining frames", "",
             f"Each backbone of a block pretrained on the same number of frames: that share from the test space, the "
             f"rest evenly from the other spaces named. x100, mean ± std over seeds ({seeds_caption(results)})"
             + ("; held-out mean: the same heads on the held-out spaces." if held else ".")]
    scratch = _scratch(results)
    for metric in _metrics(results):
        for title, group in curves.items():
            lines += ["", f"**{COLUMNS[metric]}**, {title}", "",
                      f"| backbone | test-space share | other spaces | {test_space} (test) |"
                      + (" held-out mean |" if held else ""), "|---" * (5 if held else 4) + "|"]
            for name, runs in [*group.items(), *([(REFERENCE, scratch)] if scratch else [])]:
                data = _data(runs)
                share = f"{data['test_space_share']:g}" if data else "–"
                lines.append(f"| {name} | {share} | {space_names(data.get('external', []))} | "
                             f"{score(runs, metric).text(SCALE)} |"
                             + (f" {score(runs, metric, held_out=True).text(SCALE)} |" if held else ""))
    return "\n".join(lines) + "\n"


def data_worth_markdown(groups: dict[str, tuple[Group, Group]], results: list[TransferResult], test_space: str) -> str:
    lines = ["## Data worth: other spaces against the test space's own frames", "",
             f"Pretrained on other spaces only (no frame of {test_space}), or on {test_space} alone; scored on "
             f"{test_space}. x100, mean ± std over seeds ({seeds_caption(results)})."]
    scratch = _scratch(results)
    for metric in _metrics(results):
        for objective, (external, own) in groups.items():
            lines += ["", f"**{COLUMNS[metric]}**, {objective}", "",
                      f"| backbone | pretrained on | frames | {test_space} (test) |", "|---|---|---|---|"]
            for name, runs in external.items():
                data = _data(runs)
                lines.append(f"| {name} | {len(data['external'])} other spaces ({space_names(data['external'])}) | "
                             f"{data['frames'] or 'all'} | {score(runs, metric).text(SCALE)} |")
            for name, runs in own.items():
                lines.append(f"| {name} | the test space only | {_data(runs)['frames'] or 'all'} | "
                             f"{score(runs, metric).text(SCALE)} |")
            if scratch:
                lines.append(f"| {REFERENCE} | – | – | {score(scratch, metric).text(SCALE)} |")
    return "\n".join(lines) + "\n"


def _level(axis, cell: Cell, colour: str, style: str, label: str) -> None:
    """A reference drawn across the panel: its mean as a line, its std as a band."""
    if cell.values:
        mean, std = cell.mean * SCALE, cell.std * SCALE
        axis.axhline(mean, color=colour, linestyle=style, label=label)
        axis.axhspan(mean - std, mean + std, color=colour, alpha=0.1, linewidth=0)


def _points(axis, xs: list[float], cells: list[Cell], colour: str, style: str, label: str) -> None:
    kept = [(x, c) for x, c in zip(xs, cells) if c.values]
    if kept:
        axis.errorbar([x for x, _ in kept], [c.mean * SCALE for _, c in kept], yerr=[c.std * SCALE for _, c in kept],
                      marker="o", capsize=2, color=colour, linestyle=style, label=label)


def tradeoff_chart(curves: dict[str, Group], results: list[TransferResult], test_space: str) -> bytes:
    """Per headline metric: the test-space score (solid) and the held-out mean (dashed) against the share,
    one colour per curve; scratch's as grey level lines."""
    metrics = _metrics(results)
    figure, axes = _panels(metrics, f"trade-off: test-space share of the pretraining frames ({seeds_caption(results)})")
    scratch = _scratch(results)
    for axis, metric in zip(axes, metrics):
        for k, (title, group) in enumerate(curves.items()):
            shares = [_data(runs)["test_space_share"] for runs in group.values()]
            named = f"{title}: " if len(curves) > 1 else ""
            _points(axis, shares, [score(runs, metric) for runs in group.values()], f"C{k}", "-",
                    f"{named}{test_space} (test)")
            _points(axis, shares, [score(runs, metric, held_out=True) for runs in group.values()], f"C{k}", "--",
                    f"{named}held-out mean")
        _level(axis, score(scratch, metric), "grey", "--", f"scratch: {test_space}")
        _level(axis, score(scratch, metric, held_out=True), "grey", ":", "scratch: held-out mean")
        axis.set_xlabel("test-space share of pretraining frames")
        axis.set_xlim(-0.05, 1.05)
    axes[0].legend(fontsize=6)
    return _png(figure)


def data_worth_chart(groups: dict[str, tuple[Group, Group]], results: list[TransferResult], test_space: str) -> bytes:
    """Per headline metric: the test-space score against the number of other spaces pretrained on (log 2),
    one colour per objective; the test-space-only backbones and scratch as level lines."""
    metrics = _metrics(results)
    figure, axes = _panels(metrics, f"data worth: other spaces vs {test_space}'s own frames ({seeds_caption(results)})")
    scratch = _scratch(results)
    counts = sorted({len(_data(runs)["external"]) for external, _ in groups.values() for runs in external.values()})
    for axis, metric in zip(axes, metrics):
        for k, (objective, (external, own)) in enumerate(groups.items()):
            _points(axis, [len(_data(runs)["external"]) for runs in external.values()],
                    [score(runs, metric) for runs in external.values()], f"C{k}", "-", f"{objective}: other spaces")
            for style, (name, runs) in zip(("--", "-.", ":"), own.items()):
                _level(axis, score(runs, metric), f"C{k}", style,
                       f"{name}: {test_space} only, {_data(runs)['frames'] or 'all'} frames")
        _level(axis, score(scratch, metric), "grey", "--", "scratch")
        axis.set_xscale("log", base=2)
        axis.set_xticks(counts, [str(c) for c in counts])
        axis.set_xlabel("other spaces pretrained on")
    axes[0].legend(fontsize=6)
    return _png(figure)
