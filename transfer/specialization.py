"""The specialization analysis of `tst report`: every backbone's heads scored on the test space and on
held-out spaces (`transfer.held_out`), so the table shows whether test-space pretraining helps *where it
pretrained* more than elsewhere.

For each headline metric: a table with one row per backbone and one column per eval space (the test space
first), cells mean ± std over seeds, and the specialization gap = test-space score minus the mean over the
held-out spaces. A backbone that specialized has a larger gap than scratch (whose heads saw neither). One
figure, specialization.png: per metric, grouped bars per eval space, one bar per backbone. When some
backbone pretrained on a held-out space alone (pretrain.external, share 0), the cross matrix "pretrained on
X, scored on Y" follows.
"""

from __future__ import annotations

import numpy as np

from tst.transfer.report import (COLUMNS, HEADLINE, SCALE, Cell, TransferResult, _colours, _panels, _png,
                                 backbone_order, seeds_caption)

# metric -> backbone -> eval space -> Cell
Table = dict[str, dict[str, dict[str, Cell]]]


def specialization_table(results: list[TransferResult], test_space: str) -> Table:
    """The headline metrics of the runs that were also scored on held-out spaces; empty without any."""
    scored = [r for r in results if r.held_out]
    spaces = [test_space] + sorted({space for r in scored for space in r.held_out})
    table: Table = {}
    for metric in HEADLINE:
        rows = {}
        for name in backbone_order(scored):
            cells = {space: Cell() for space in spaces}
            for r in (r for r in scored if r.backbone == name):
                for space, scores in [(test_space, r.metrics), *r.held_out.items()]:
                    if metric in scores:
                        cells[space].values.append(float(scores[metric]))
                        cells[space].seeds.append(r.seed)
            if any(cell.values for cell in cells.values()):
                rows[name] = cells
        if rows:
            table[metric] = rows
    return table


def gap(cells: dict[str, Cell], test_space: str) -> Cell:
    """Per seed: the test-space score minus the mean of the held-out spaces' scores."""
    test = cells[test_space].by_seed()
    others = [cell.by_seed() for space, cell in cells.items() if space != test_space]
    seeds = [s for s in test if all(s in other for other in others)] if others else []
    return Cell([test[s] - float(np.mean([other[s] for other in others])) for s in seeds], seeds)


def specialization_markdown(table: Table, test_space: str, used: list[TransferResult]) -> str:
    lines = ["## Specialization: the test space against held-out spaces", "",
             f"The same heads scored on the test space ({test_space}) and on held-out spaces, whose labels no head "
             "trained on (a trade-off experiment also pretrains on some of their frames); "
             f"x100, mean ± std over seeds ({seeds_caption(used)}). Gap = test space minus the held-out mean: "
             "a backbone pretrained on the test space should have the larger gap."]
    for metric, rows in table.items():
        spaces = list(next(iter(rows.values())))
        lines += ["", f"**{COLUMNS[metric]}**", "",
                  "| backbone | " + " | ".join(f"{s} (test)" if s == test_space else s for s in spaces) + " | gap |",
                  "|---" * (len(spaces) + 2) + "|"]
        for name, cells in rows.items():
            lines.append(f"| {name} | " + " | ".join(cells[s].text(SCALE) for s in spaces) +
                         f" | {gap(cells, test_space).text(SCALE)} |")
    return "\n".join(lines) + "\n"


def pretrained_on(runs: list[TransferResult], test_space: str) -> str | None:
    """The one space a backbone's pretraining frames came from (the test space, or the single other space
    of a backbone pretrained on it alone); None for scratch, the generalists and mixed pretraining."""
    from tst.transfer.pretraining_data import space_names

    data = runs[0].pretrain_data if runs else None
    if not data:
        return None
    if data["test_space_share"] == 1:
        return test_space
    return space_names(data["external"]) if data["test_space_share"] == 0 and len(data["external"]) == 1 else None


def cross_matrix_markdown(table: Table, test_space: str, used: list[TransferResult]) -> str | None:
    """The cross matrix, "pretrained on X, scored on Y": the specialization table's rows with the space each
    backbone pretrained on, its own space's cell in bold; None unless some backbone pretrained on a held-out
    space alone."""
    sources = {name: pretrained_on([r for r in used if r.backbone == name], test_space)
               for name in backbone_order(used)}
    spaces = {space for rows in table.values() for cells in rows.values() for space in cells}
    if not any(source in spaces and source != test_space for source in sources.values()):
        return None
    lines = ["## Cross matrix: pretrained on X, scored on Y", "",
             f"Rows: the space each backbone pretrained on; columns: the spaces its heads were scored on; x100, mean ± "
             f"std over seeds ({seeds_caption(used)}). Bold: scored where it pretrained; a backbone specialized when "
             "its bold cell leads its column."]
    for metric, rows in table.items():
        columns = list(next(iter(rows.values())))
        lines += ["", f"**{COLUMNS[metric]}**", "",
                  "| backbone | pretrained on | " + " | ".join(f"{s} (test)" if s == test_space else s for s in columns)
                  + " |", "|---" * (len(columns) + 2) + "|"]
        for name, cells in rows.items():
            source = sources.get(name)
            shown = [f"**{cells[s].text(SCALE)}**" if s == source and cells[s].values else cells[s].text(SCALE)
                     for s in columns]
            lines.append(f"| {name} | {source or '–'} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def specialization_chart(table: Table, test_space: str, used: list[TransferResult]) -> bytes:
    """Per headline metric, one group of bars per eval space (test space first), one bar per backbone."""
    figure, axes = _panels(list(table), f"specialization: test space {test_space} vs held-out spaces "
                                        f"({seeds_caption(used)})")
    colours = _colours(used)
    for axis, (metric, rows) in zip(axes, table.items()):
        spaces = list(next(iter(rows.values())))
        width = 0.8 / len(rows)
        for k, (name, cells) in enumerate(rows.items()):
            x = np.arange(len(spaces)) + k * width
            axis.bar(x, [cells[s].mean * SCALE if cells[s].values else 0 for s in spaces], width,
                     yerr=[cells[s].std * SCALE for s in spaces], capsize=2, color=colours[name], label=name)
        axis.set_xticks(np.arange(len(spaces)) + width * (len(rows) - 1) / 2,
                        [f"{s}\n(test)" if s == test_space else s for s in spaces], fontsize=8)
    axes[0].legend(fontsize=7)
    return _png(figure)
