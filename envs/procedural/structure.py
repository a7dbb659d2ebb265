"""The building shell: floors, ceilings, wall slabs with door and window openings, doors, windows,
baseboards and ceiling lamps. Every part is a labeled instance."""

from __future__ import annotations

import numpy as np

from tst.envs.procedural.layout import WALL_THICKNESS, Opening, Room, Side
from tst.envs.procedural.parts import Piece

SLAB = WALL_THICKNESS / 2  # each room owns the inner half of its walls
ROOM_WALLS = {"bathroom": "wall_tile", "kitchen": "paint_1", "living room": "paint_0", "bedroom": "paint_2",
              "office": "paint_3"}
ROOM_FLOORS = {"bathroom": "floor_tile", "kitchen": "floor_tile"}


def side_box(side: Side, a0: float, a1: float, o0: float, o1: float, z0: float, z1: float):
    """World (lo, hi) of the box spanning a0..a1 along `side`, o0..o1 metres into the room, z0..z1."""
    p0, p1 = side.point(a0, o0), side.point(a1, o1)
    lo, hi = np.minimum(p0, p1), np.maximum(p0, p1)
    return (lo[0], lo[1], z0), (hi[0], hi[1], z1)


def _solid_spans(side: Side, height: float) -> list[tuple[float, float, float, float]]:
    """(a0, a1, z0, z1) boxes that make up a wall with holes: cut at every opening edge, then keep the
    heights no opening covers."""
    cuts = sorted({side.lo, side.hi, *[v for o in side.openings for v in (o.lo, o.hi)]})
    spans = []
    for a0, a1 in zip(cuts[:-1], cuts[1:]):
        middle = (a0 + a1) / 2
        holes = sorted((o.bottom, o.top) for o in side.openings if o.lo < middle < o.hi)
        z = 0.0
        for bottom, top in holes + [(height, height)]:
            if bottom > z:
                spans.append((a0, a1, z, bottom))
            z = max(z, top)
    return spans


def build_room_shell(piece: Piece, room: Room, height: float) -> None:
    """Floor, ceiling, the room's four wall slabs and its baseboards."""
    r = room.rect
    piece.box((r.x0, r.y0, -0.05), (r.x1, r.y1, 0.0), "floor", piece.instance(),
              ROOM_FLOORS.get(room.kind, "floor_wood"))
    piece.box((r.x0, r.y0, height), (r.x1, r.y1, height + 0.05), "ceiling", piece.instance(), "ceiling_paint")
    wall_role = ROOM_WALLS.get(room.kind, "paint_0")
    baseboard = piece.instance()
    for side in room.sides:
        wall = piece.instance()
        for a0, a1, z0, z1 in _solid_spans(side, height):
            piece.box(*side_box(side, a0, a1, 0.0, SLAB, z0, z1), "wall", wall, wall_role)
        doors = [(o.lo, o.hi) for o in side.openings if o.kind == "door"]
        cuts = sorted({side.lo + SLAB, side.hi - SLAB, *[v for d in doors for v in d]})
        for a0, a1 in zip(cuts[:-1], cuts[1:]):
            if not any(lo <= (a0 + a1) / 2 <= hi for lo, hi in doors):
                piece.box(*side_box(side, a0, a1, SLAB, SLAB + 0.015, 0.0, 0.08), "baseboard", baseboard,
                          "white_plastic")
    lamp = piece.instance()
    cx, cy = (r.x0 + r.x1) / 2, (r.y0 + r.y1) / 2
    piece.revolve(cx, cy, height - 0.12, [(0.12, 0.0), (0.22, 0.08), (0.06, 0.12)], "ceiling lamp", lamp,
                  "white_plastic")


def build_door(piece: Piece, side: Side, door: Opening) -> None:
    """Door frame (jambs, head, casings on both faces) and the leaf: open 90° into the room for
    doors between rooms, closed for the entrance."""
    frame = piece.instance()
    back = -SLAB if door.shared else 0.0
    for a0, a1 in ((door.lo - 0.06, door.lo + 0.01), (door.hi - 0.01, door.hi + 0.06)):  # cover the reveals
        piece.box(*side_box(side, a0, a1, back - 0.015, SLAB + 0.015, 0.0, door.top + 0.06), "doorframe", frame,
                  "white_plastic")
    piece.box(*side_box(side, door.lo - 0.06, door.hi + 0.06, back - 0.015, SLAB + 0.015, door.top - 0.01,
                        door.top + 0.06), "doorframe", frame, "white_plastic")
    leaf = piece.instance()
    if door.shared:  # swung open against the wall inside this room, hinge at `lo`
        piece.box(*side_box(side, door.lo + 0.015, door.lo + 0.055, SLAB + 0.02, SLAB + door.hi - door.lo, 0.01,
                            door.top - 0.02),
                  "door", leaf, "wood_light")
    else:
        piece.box(*side_box(side, door.lo, door.hi, 0.0, 0.045, 0.01, door.top - 0.01), "door", leaf, "wood_dark")
        handle = side.point(door.hi - 0.08, 0.07)
        piece.cylinder(handle[0], handle[1], 1.0, 0.02, 0.12, "door", leaf, "metal")


def build_window(piece: Piece, side: Side, window: Opening) -> None:
    """Glass pane, frame bars (with a mullion when wide) and an inside windowsill."""
    piece.box(*side_box(side, window.lo, window.hi, 0.005, 0.02, window.bottom, window.top), "window",
              piece.instance(), "glass")
    frame = piece.instance()
    bars = [(window.lo, window.lo + 0.05, window.bottom, window.top), (window.hi - 0.05, window.hi, window.bottom,
            window.top), (window.lo, window.hi, window.bottom, window.bottom + 0.05),
            (window.lo, window.hi, window.top - 0.05, window.top)]
    if window.hi - window.lo > 1.0:
        middle = window.centre
        bars.append((middle - 0.025, middle + 0.025, window.bottom, window.top))
    for a0, a1, z0, z1 in bars:
        piece.box(*side_box(side, a0, a1, 0.0, 0.05, z0, z1), "window frame", frame, "white_plastic")
    piece.box(*side_box(side, window.lo - 0.06, window.hi + 0.06, 0.0, SLAB + 0.07, window.bottom - 0.03,
                        window.bottom), "windowsill", piece.instance(), "white_plastic")


def build_openings(piece: Piece, room: Room) -> None:
    """Doors (each built once: by the room on the side facing +x/+y for shared ones) and windows."""
    for side in room.sides:
        for opening in side.openings:
            if opening.kind == "window":
                build_window(piece, side, opening)
            elif not opening.shared or side.inward > 0:
                build_door(piece, side, opening)
