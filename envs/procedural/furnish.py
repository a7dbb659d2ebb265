"""Furnishing a room: place the room kind's furniture without overlaps, backed on walls where it
belongs, clear of doors and windows; then curtains, pictures and towels on free wall."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tst.envs.procedural.builder import placement
from tst.envs.procedural.furniture import CATALOG, RECIPES
from tst.envs.procedural.layout import Rect, Room, Side
from tst.envs.procedural.parts import Piece
from tst.envs.procedural.structure import SLAB, side_box

ATTEMPTS = 40
GAP = 0.05  # metres kept between neighbouring items


@dataclass
class Occupied:
    rect: Rect
    top: float  # metres above the floor


def _rect(points: list[np.ndarray]) -> Rect:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return Rect(min(xs), min(ys), max(xs), max(ys))


def _side_rect(side: Side, a0: float, a1: float, o0: float, o1: float) -> Rect:
    return _rect([side.point(a0, o0), side.point(a1, o1)])


class RoomFurnisher:
    """Places items in one room; `occupied` grows as items are placed."""

    def __init__(self, room: Room, piece: Piece):
        self.room = room
        self.piece = piece
        self.rng = piece.rng
        self.occupied: list[Occupied] = []
        for side in room.sides:  # keep door swings and passages clear
            for opening in side.openings:
                if opening.kind == "door":
                    self.occupied.append(Occupied(_side_rect(side, opening.lo - 0.1, opening.hi + 0.1, 0.0, 1.1), 3.0))

    def _free(self, rect: Rect, bottom: float = 0.0) -> bool:
        return self.room.inner.contains(rect) and not any(
            o.top > bottom and o.rect.overlaps(rect, GAP) for o in self.occupied)

    def _clear_of_windows(self, side: Side, a0: float, a1: float, top: float) -> bool:
        return not any(o.kind == "window" and o.lo - 0.05 < a1 and a0 < o.hi + 0.05 and top > o.bottom
                       for o in side.openings)

    def place(self, kind_name: str) -> bool:
        """Try to place one item of `kind_name`; False when the room has no room for it."""
        kind = CATALOG[kind_name]
        for _ in range(ATTEMPTS):
            w, d, h = (self.rng.uniform(*r) for r in (kind.width, kind.depth, kind.height))
            if kind.place == "wall":
                side = self.room.sides[int(self.rng.integers(4))]
                if side.length - 2 * SLAB < w + 0.02:
                    continue
                along = self.rng.uniform(side.lo + SLAB + w / 2, side.hi - SLAB - w / 2)
                rect = _side_rect(side, along - w / 2, along + w / 2, SLAB + 0.01, SLAB + 0.01 + d)
                if not self._clear_of_windows(side, along - w / 2, along + w / 2, h):
                    continue
                centre, yaw = side.point(along, SLAB + 0.01 + d / 2), side.facing_yaw
            else:
                inner = self.room.inner.shrink(0.3)
                centre = np.array([self.rng.uniform(inner.x0, inner.x1), self.rng.uniform(inner.y0, inner.y1)])
                to_middle = np.array([(inner.x0 + inner.x1) / 2, (inner.y0 + inner.y1) / 2]) - centre
                yaw = round(math.atan2(to_middle[1], to_middle[0]) / (math.pi / 2)) * (math.pi / 2)
                across_x = abs(math.cos(yaw)) > 0.5  # depth runs along x
                half = np.array([d, w] if across_x else [w, d]) / 2
                rect = Rect(centre[0] - half[0], centre[1] - half[1], centre[0] + half[0], centre[1] + half[1])
            if not self._free(rect):
                continue
            kind.build(Piece(self.piece.builder, self.piece.palette, self.rng, placement(*centre, yaw)), w, d, h)
            self.occupied.append(Occupied(rect, h))
            return True
        return False

    def curtains(self) -> None:
        """Curtain panels beside each window (one curtain instance per window)."""
        for side in self.room.sides:
            for window in [o for o in side.openings if o.kind == "window"]:
                panels = [(window.lo - 0.35, window.lo - 0.02), (window.hi + 0.02, window.hi + 0.35)]
                rects = [_side_rect(side, a0, a1, SLAB, SLAB + 0.12) for a0, a1 in panels]
                if not all(self._free(r) for r in rects):
                    continue
                curtain = self.piece.instance()
                for (a0, a1), rect in zip(panels, rects):
                    folds = 4
                    for k in range(folds):
                        f0 = a0 + (a1 - a0) * k / folds
                        depth = SLAB + (0.1 if k % 2 else 0.06)
                        self.piece.box(*side_box(side, f0, f0 + (a1 - a0) / folds, SLAB + 0.02, depth, 0.03,
                                                 min(window.top + 0.2, 2.4)), "curtain", curtain, "curtain")
                    self.occupied.append(Occupied(rect, 2.4))

    def hang(self, class_name: str, width: float, height: float, bottom: float, depth: float, role: str) -> bool:
        """A flat item on a free stretch of wall (a picture, a towel)."""
        for _ in range(ATTEMPTS):
            side = self.room.sides[int(self.rng.integers(4))]
            if side.length - 2 * SLAB < width + 0.4:
                continue
            along = self.rng.uniform(side.lo + SLAB + 0.2 + width / 2, side.hi - SLAB - 0.2 - width / 2)
            a0, a1 = along - width / 2, along + width / 2
            if any(o.lo - 0.1 < a1 and a0 < o.hi + 0.1 for o in side.openings):
                continue
            rect = _side_rect(side, a0, a1, SLAB, SLAB + depth)
            if not self._free(rect, bottom):
                continue
            self.piece.box(*side_box(side, a0, a1, SLAB, SLAB + depth, bottom, bottom + height), class_name,
                           self.piece.instance(), role)
            return True
        return False


def furnish(room: Room, piece: Piece) -> None:
    """Curtains, the room kind's recipe, then pictures and towels."""
    furnisher = RoomFurnisher(room, piece)
    rng = piece.rng
    if room.kind != "bathroom" and rng.random() < 0.7:
        furnisher.curtains()
    for kind_name, low, high in RECIPES[room.kind]:
        for _ in range(int(rng.integers(low, high + 1))):
            furnisher.place(kind_name)
    if room.kind == "bathroom":
        furnisher.hang("towel", 0.45, 0.6, 0.9, 0.04, "towel")
    else:
        for _ in range(int(rng.integers(0, 3))):
            size = rng.uniform(0.4, 0.9)
            furnisher.hang("picture", size, size * rng.uniform(0.6, 1.0), rng.uniform(1.3, 1.5), 0.03,
                           f"art_{int(rng.integers(2))}")
