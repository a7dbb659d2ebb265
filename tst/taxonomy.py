"""Taxonomies: a space's ordered class list. Id 0 is always `unlabeled`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from tst.errors import TSTError

UNLABELED = "unlabeled"


@dataclass(frozen=True)
class SemanticClass:
    """name: class name (ScanNet++ top-100 spelling where the class exists there).
    thing: True for countable objects (get boxes), False for stuff (wall, floor, ...)."""

    name: str
    thing: bool


class Taxonomy:
    """An ordered class list; a class's id is its index, id 0 is `unlabeled`."""

    def __init__(self, classes: list[SemanticClass]):
        names = [c.name for c in classes]
        if not names or names[0] != UNLABELED:
            classes = [SemanticClass(UNLABELED, False)] + [c for c in classes if c.name != UNLABELED]
            names = [c.name for c in classes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise TSTError(f"taxonomy: duplicate class names {duplicates}")
        self.classes = list(classes)
        self._ids = {name: index for index, name in enumerate(names)}

    def __len__(self) -> int:
        return len(self.classes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Taxonomy) and self.classes == other.classes

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def id(self, name: str, source: str = "class") -> int:
        """The id of `name`; a one-line error naming `source` (a file or field) when it is unknown."""
        try:
            return self._ids[name]
        except KeyError:
            raise TSTError(
                f"{source}: class '{name}' is not in the taxonomy (expected one of: {', '.join(self.names[1:])})"
            ) from None

    def name(self, class_id: int) -> str:
        return self.classes[class_id].name

    def is_thing(self, class_id: int) -> bool:
        return self.classes[class_id].thing

    @property
    def thing_ids(self) -> list[int]:
        return [index for index, c in enumerate(self.classes) if c.thing]

    def to_dict(self) -> dict:
        return {"classes": [{"id": i, "name": c.name, "thing": c.thing} for i, c in enumerate(self.classes)]}

    @classmethod
    def from_dict(cls, data: dict) -> Taxonomy:
        return cls([SemanticClass(c["name"], bool(c["thing"])) for c in data["classes"]])

    def fingerprint(self) -> str:
        """sha256 of the ordered names and flags: two spaces share labels iff their fingerprints match."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _classes(stuff: list[str], things: list[str]) -> list[SemanticClass]:
    return [SemanticClass(n, False) for n in stuff] + [SemanticClass(n, True) for n in things]


# The indoor taxonomy of procedural apartments and the default for labeled meshes. Names are
# ScanNet++ top-100 names where the class exists there; `baseboard`, `bathtub`, `desk`,
# `armchair`, `nightstand` and `floor lamp` are not in that list and keep their plain names.
INDOOR = Taxonomy(
    _classes(
        stuff=["wall", "floor", "ceiling", "doorframe", "window", "window frame", "windowsill", "baseboard"],
        things=[
            "door", "bed", "pillow", "blanket", "sofa", "armchair", "chair", "office chair", "table",
            "desk", "cabinet", "kitchen cabinet", "kitchen counter", "nightstand", "bookshelf", "book",
            "table lamp", "floor lamp", "ceiling lamp", "tv", "plant", "toilet", "sink", "bathtub",
            "refrigerator", "microwave", "trash can", "picture", "towel", "curtain",
        ],
    )
)


def normalized(name: str) -> str:
    """A class name compared across taxonomies: lower case, `_`/`-` as spaces, single spaces."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


# Class names that are stuff (surfaces and structure: never boxed, never counted) wherever a space names its
# own classes (a label map, a Replica scene): INDOOR's stuff, and structure other datasets name.
STUFF_NAMES = frozenset({normalized(c.name) for c in INDOOR.classes[1:] if not c.thing}
                        | {"beam", "stair", "stairs", "rug", "blinds", "pipe", "vent"})


def is_stuff_name(name: str) -> bool:
    """Whether a class of this name is stuff, in any spelling (`Window_Frame` as `window frame`)."""
    return normalized(name) in STUFF_NAMES


@dataclass(frozen=True)
class ClassMapping:
    """How one taxonomy's classes map onto another's by name.

    lookup[i]: the target id of source class i (0 = unlabeled when the target has no class of that name).
    shared: the source classes that map (names as the source spells them); dropped: those that become
    unlabeled."""

    lookup: tuple[int, ...]
    shared: tuple[str, ...]
    dropped: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"lookup": list(self.lookup), "shared": list(self.shared), "dropped": list(self.dropped)}


def map_by_name(source: Taxonomy, target: Taxonomy) -> ClassMapping:
    """Each labeled class of `source` onto the `target` class of the same normalized name."""
    target_ids = {normalized(name): index for index, name in enumerate(target.names) if index}
    lookup = [0] + [target_ids.get(normalized(name), 0) for name in source.names[1:]]
    shared = tuple(name for name, index in zip(source.names[1:], lookup[1:]) if index)
    dropped = tuple(name for name, index in zip(source.names[1:], lookup[1:]) if not index)
    return ClassMapping(tuple(lookup), shared, dropped)
