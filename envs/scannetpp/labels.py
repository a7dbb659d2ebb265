"""The benchmark classes (top100), their thing subset, and the raw-label map."""

from __future__ import annotations

import csv
from pathlib import Path

from tst.errors import TSTError
from tst.taxonomy import SemanticClass, Taxonomy

from tst.envs.scannetpp.files import require_file


def _read_names(path: Path) -> list[str]:
    require_file(path, "ScanNet++ class list")
    names = [line.strip() for line in path.read_text().splitlines()]
    return [n for n in names if n]


def load_taxonomy(root: str | Path) -> Taxonomy:
    """The benchmark taxonomy: top100.txt in order (id 0 = unlabeled), thing = listed in top100_instance.txt."""
    folder = Path(root) / "metadata" / "semantic_benchmark"
    names = _read_names(folder / "top100.txt")
    things = set(_read_names(folder / "top100_instance.txt"))
    if not names:
        raise TSTError(f"{folder / 'top100.txt'}: no class names; expected one benchmark class per line")
    return Taxonomy([SemanticClass(n, n in things) for n in names])


def load_benchmark_map(root: str | Path) -> dict[str, str | None]:
    """raw label -> benchmark class (None = explicitly dropped) from map_benchmark.csv; {} when absent.

    Columns (toolkit `semantic/prep/map_semantic.py`): class, count, semantic_map_to, instance_map_to.
    An empty semantic_map_to keeps the label as it is, "None" drops it, anything else renames it.
    """
    path = Path(root) / "metadata" / "semantic_benchmark" / "map_benchmark.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "class" not in columns or "semantic_map_to" not in columns:
            raise TSTError(f"{path}: expected columns 'class' and 'semantic_map_to', found {columns}")
        mapping: dict[str, str | None] = {}
        for row in reader:
            raw = (row["class"] or "").strip()
            target = (row["semantic_map_to"] or "").strip()
            if raw:
                mapping[raw] = None if target == "None" else (target or raw)
    return mapping


def benchmark_class(label: str, taxonomy: Taxonomy, mapping: dict[str, str | None]) -> int:
    """Taxonomy id of a raw annotation label (0 when it maps to no benchmark class)."""
    target = mapping[label] if label in mapping else label
    if target is None or target not in taxonomy.names:
        return 0
    return taxonomy.id(target)


# --------------------------------------------------------------------------- mesh and labels
