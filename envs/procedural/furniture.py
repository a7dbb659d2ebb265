"""Parametric furniture: each builder makes one item (and what sits on it) from boxes, cylinders and
spheres, in the Piece's local frame (front = +x, footprint w along y by d along x, centred)."""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Callable

from tst.envs.procedural.parts import Piece


def _legs(p: Piece, w: float, d: float, h: float, inset: float, radius: float, cls: str, inst: int,
          role: str) -> None:
    for sx in (-1, 1):
        for sy in (-1, 1):
            p.cylinder(sx * (d / 2 - inset), sy * (w / 2 - inset), 0.0, radius, h, cls, inst, role)


def table(p: Piece, w: float, d: float, h: float, cls: str = "table") -> None:
    inst, role = p.instance(), p.choice(["wood_light", "wood_dark"])
    p.box((-d / 2, -w / 2, h - 0.04), (d / 2, w / 2, h), cls, inst, role)
    _legs(p, w, d, h - 0.04, 0.06, 0.025, cls, inst, role)


def desk(p: Piece, w: float, d: float, h: float) -> None:
    inst, role = p.instance(), p.choice(["wood_light", "wood_dark", "white_plastic"])
    p.box((-d / 2, -w / 2, h - 0.03), (d / 2, w / 2, h), "desk", inst, role)
    p.box((-d / 2, -w / 2, 0), (d / 2, -w / 2 + 0.03, h - 0.03), "desk", inst, role)
    p.box((-d / 2, w / 2 - 0.4, 0), (d / 2, w / 2, h - 0.03), "desk", inst, role)  # drawer block
    for z in (0.2, 0.45):
        p.box((d / 2, w / 2 - 0.25, z), (d / 2 + 0.02, w / 2 - 0.15, z + 0.02), "desk", inst, "metal")


def chair(p: Piece, w: float, d: float, h: float) -> None:
    inst, role = p.instance(), p.choice(["wood_light", "wood_dark"])
    seat = 0.45
    p.box((-d / 2, -w / 2, seat - 0.04), (d / 2, w / 2, seat), "chair", inst, role)
    _legs(p, w, d, seat - 0.04, 0.03, 0.018, "chair", inst, role)
    p.box((-d / 2, -w / 2, seat), (-d / 2 + 0.04, w / 2, h), "chair", inst, role)


def office_chair(p: Piece, w: float, d: float, h: float) -> None:
    inst = p.instance()
    for k in range(5):  # star base: five spokes as thin boxes rotated around the column
        spoke = p.moved(0.0, 0.0, yaw=k * 2 * math.pi / 5)
        spoke.box((0, -0.02, 0.04), (w / 2, 0.02, 0.07), "office chair", inst, "black_plastic")
    p.cylinder(0, 0, 0.07, 0.03, 0.35, "office chair", inst, "metal")
    p.box((-d / 2 + 0.03, -w / 2 + 0.03, 0.42), (d / 2 - 0.03, w / 2 - 0.03, 0.5), "office chair", inst, "fabric_2")
    p.box((-d / 2 + 0.03, -w / 2 + 0.06, 0.55), (-d / 2 + 0.09, w / 2 - 0.06, h), "office chair", inst, "fabric_2")


def upholstered(p: Piece, w: float, d: float, h: float, cls: str) -> None:
    """Sofa or armchair: base, back, arms, seat cushions."""
    inst, role = p.instance(), p.choice(["fabric_0", "fabric_1", "fabric_2"])
    arm = 0.16
    p.box((-d / 2, -w / 2, 0.08), (d / 2, w / 2, 0.38), cls, inst, role)
    p.box((-d / 2, -w / 2, 0.38), (-d / 2 + 0.2, w / 2, h), cls, inst, role)
    for side in (-1, 1):
        y0 = side * w / 2 - (arm if side > 0 else 0)
        p.box((-d / 2, y0, 0.38), (d / 2, y0 + arm, 0.62), cls, inst, role)
    seats = max(1, round((w - 2 * arm) / 0.65))
    step = (w - 2 * arm) / seats
    for k in range(seats):
        y0 = -w / 2 + arm + k * step
        p.box((-d / 2 + 0.2, y0 + 0.01, 0.38), (d / 2 - 0.02, y0 + step - 0.01, 0.48), cls, inst, role)
    _legs(p, w, d, 0.08, 0.05, 0.02, cls, inst, "wood_dark")


def sofa(p: Piece, w: float, d: float, h: float) -> None:
    upholstered(p, w, d, h, "sofa")


def armchair(p: Piece, w: float, d: float, h: float) -> None:
    upholstered(p, w, d, h, "armchair")


def bed(p: Piece, w: float, d: float, h: float) -> None:
    """Frame, mattress, headboard at the back (-x), pillows and a blanket (their own instances)."""
    inst, role = p.instance(), p.choice(["wood_light", "wood_dark", "fabric_1"])
    p.box((-d / 2, -w / 2, 0.05), (d / 2, w / 2, 0.3), "bed", inst, role)
    p.box((-d / 2 + 0.02, -w / 2 + 0.02, 0.3), (d / 2 - 0.02, w / 2 - 0.02, 0.5), "bed", inst, "linen")
    p.box((-d / 2, -w / 2, 0.05), (-d / 2 + 0.06, w / 2, h), "bed", inst, role)
    _legs(p, w, d, 0.05, 0.05, 0.03, "bed", inst, role)
    pillows = 2 if w > 1.2 else 1
    for k in range(pillows):
        y0 = -w / 2 + 0.08 + k * (w - 0.16) / pillows
        p.box((-d / 2 + 0.1, y0, 0.5), (-d / 2 + 0.45, y0 + (w - 0.16) / pillows - 0.06, 0.63), "pillow",
              p.instance(), "linen")
    blanket = p.instance()
    p.box((-d / 2 + 0.6, -w / 2 - 0.02, 0.5), (d / 2 + 0.02, w / 2 + 0.02, 0.54), "blanket", blanket, "fabric_0")
    for side in (-1, 1):
        y = side * (w / 2 + 0.01)
        p.box((-d / 2 + 0.6, y - 0.02, 0.25), (d / 2 + 0.02, y + 0.02, 0.54), "blanket", blanket, "fabric_0")


def cabinet(p: Piece, w: float, d: float, h: float, cls: str = "cabinet", role: str | None = None) -> None:
    """A body with door fronts and handles."""
    inst = p.instance()
    role = role or p.choice(["wood_light", "wood_dark", "white_plastic"])
    p.box((-d / 2, -w / 2, 0.0), (d / 2, w / 2, h), cls, inst, role)
    doors = max(1, round(w / 0.5))
    for k in range(doors):
        y0 = -w / 2 + k * w / doors
        p.box((d / 2, y0 + 0.01, 0.05), (d / 2 + 0.015, y0 + w / doors - 0.01, h - 0.03), cls, inst, role)
        hy = y0 + (w / doors) * (0.85 if k % 2 == 0 else 0.15)
        p.box((d / 2 + 0.015, hy - 0.01, h * 0.5), (d / 2 + 0.035, hy + 0.01, h * 0.5 + 0.12), cls, inst, "metal")


def nightstand(p: Piece, w: float, d: float, h: float) -> None:
    cabinet(p, w, d, h, "nightstand")
    if p.rng.random() < 0.8:
        table_lamp(p, 0.0, 0.0, h)


def table_lamp(p: Piece, x: float, y: float, z: float) -> None:
    inst = p.instance()
    p.cylinder(x, y, z, 0.07, 0.03, "table lamp", inst, "metal")
    p.cylinder(x, y, z + 0.03, 0.012, 0.25, "table lamp", inst, "metal")
    p.revolve(x, y, z + 0.2, [(0.14, 0.0), (0.09, 0.18)], "table lamp", inst, "lamp_shade")


def floor_lamp(p: Piece, w: float, d: float, h: float) -> None:
    inst = p.instance()
    p.cylinder(0, 0, 0, w / 2, 0.03, "floor lamp", inst, "metal")
    p.cylinder(0, 0, 0.03, 0.015, h - 0.3, "floor lamp", inst, "metal")
    p.revolve(0, 0, h - 0.32, [(0.2, 0.0), (0.13, 0.3)], "floor lamp", inst, "lamp_shade")


def tv_stand(p: Piece, w: float, d: float, h: float) -> None:
    """A low cabinet with a TV on a foot."""
    cabinet(p, w, d, h)
    tv = p.instance()
    screen_w = min(w - 0.1, p.rng.uniform(0.9, 1.4))
    p.box((-0.1, -0.15, h), (0.05, 0.15, h + 0.03), "tv", tv, "black_plastic")
    p.box((-0.04, -0.03, h + 0.03), (0.0, 0.03, h + 0.12), "tv", tv, "black_plastic")
    p.box((-0.05, -screen_w / 2, h + 0.1), (0.0, screen_w / 2, h + 0.1 + screen_w * 0.57), "tv", tv,
          "black_plastic")


def bookshelf(p: Piece, w: float, d: float, h: float) -> None:
    """Sides, back, shelves; each shelf holds a row of books (one `book` instance per row)."""
    inst, role = p.instance(), p.choice(["wood_light", "wood_dark", "white_plastic"])
    p.box((-d / 2, -w / 2, 0), (d / 2, -w / 2 + 0.02, h), "bookshelf", inst, role)
    p.box((-d / 2, w / 2 - 0.02, 0), (d / 2, w / 2, h), "bookshelf", inst, role)
    p.box((-d / 2, -w / 2, 0), (-d / 2 + 0.015, w / 2, h), "bookshelf", inst, role)
    levels = max(3, int(h / 0.38))
    for k in range(levels + 1):
        z = k * (h - 0.02) / levels
        p.box((-d / 2, -w / 2 + 0.02, z), (d / 2, w / 2 - 0.02, z + 0.02), "bookshelf", inst, role)
        if k == levels or p.rng.random() < 0.25:
            continue
        row = p.instance()
        y = -w / 2 + 0.03 + p.rng.uniform(0, 0.15)
        while y < w / 2 - 0.08:
            thickness, height = p.rng.uniform(0.02, 0.05), p.rng.uniform(0.18, 0.3)
            p.box((-d / 2 + 0.03, y, z + 0.02), (-d / 2 + 0.03 + p.rng.uniform(0.15, d - 0.05), y + thickness,
                  z + 0.02 + height), "book", row, f"book_{int(p.rng.integers(6))}")
            y += thickness + 0.003


def plant(p: Piece, w: float, d: float, h: float) -> None:
    inst = p.instance()
    pot_h = min(0.4, h * 0.35)
    p.revolve(0, 0, 0, [(w * 0.3, 0.0), (w * 0.4, pot_h)], "plant", inst, "pot")
    for k in range(int(p.rng.integers(3, 6))):
        x, y = p.rng.uniform(-w * 0.15, w * 0.15, 2)
        z = pot_h + (h - pot_h) * p.rng.uniform(0.3, 0.75)
        p.sphere(x, y, z, w * p.rng.uniform(0.25, 0.45), "plant", inst, "leaves", squash=1.3)


def toilet(p: Piece, w: float, d: float, h: float) -> None:
    inst = p.instance()
    p.revolve(0.05, 0, 0, [(0.13, 0.0), (0.17, 0.3), (0.2, 0.4)], "toilet", inst, "ceramic")
    p.box((-d / 2, -w / 2, 0.4), (-d / 2 + 0.2, w / 2, h), "toilet", inst, "ceramic")
    p.revolve(0.05, 0, 0.4, [(0.21, 0.0), (0.21, 0.03)], "toilet", inst, "white_plastic")


def sink_on(p: Piece, x: float, y: float, z: float, width: float) -> None:
    """A basin with a tap standing on a counter at height z."""
    inst = p.instance()
    p.box((x - 0.2, y - width / 2, z), (x + 0.2, y + width / 2, z + 0.04), "sink", inst, "ceramic")
    p.box((x - 0.15, y - width / 2 + 0.05, z + 0.04), (x + 0.15, y + width / 2 - 0.05, z + 0.05), "sink", inst, "metal")
    p.cylinder(x - 0.24, y, z, 0.015, 0.25, "sink", inst, "metal")
    p.box((x - 0.24, y - 0.012, z + 0.22), (x - 0.1, y + 0.012, z + 0.25), "sink", inst, "metal")


def vanity(p: Piece, w: float, d: float, h: float) -> None:
    cabinet(p, w, d, h)
    sink_on(p, 0.02, 0.0, h, min(0.5, w - 0.1))


def bathtub(p: Piece, w: float, d: float, h: float) -> None:
    """Four rim walls and a sunken floor."""
    inst = p.instance()
    rim = 0.08
    p.box((-d / 2, -w / 2, 0), (d / 2, w / 2, 0.15), "bathtub", inst, "ceramic")
    p.box((-d / 2, -w / 2, 0.15), (-d / 2 + rim, w / 2, h), "bathtub", inst, "ceramic")
    p.box((d / 2 - rim, -w / 2, 0.15), (d / 2, w / 2, h), "bathtub", inst, "ceramic")
    p.box((-d / 2, -w / 2, 0.15), (d / 2, -w / 2 + rim, h), "bathtub", inst, "ceramic")
    p.box((-d / 2, w / 2 - rim, 0.15), (d / 2, w / 2, h), "bathtub", inst, "ceramic")


def refrigerator(p: Piece, w: float, d: float, h: float) -> None:
    inst = p.instance()
    role = p.choice(["metal", "white_plastic"])
    p.box((-d / 2, -w / 2, 0), (d / 2, w / 2, h), "refrigerator", inst, role)
    p.box((d / 2, -w / 2 + 0.01, h * 0.62), (d / 2 + 0.01, w / 2 - 0.01, h * 0.625), "refrigerator", inst,
          "black_plastic")
    for z0, z1 in ((h * 0.3, h * 0.55), (h * 0.68, h * 0.9)):
        p.box((d / 2 + 0.01, w / 2 - 0.08, z0), (d / 2 + 0.04, w / 2 - 0.06, z1), "refrigerator", inst, "metal")


def kitchen_run(p: Piece, w: float, d: float, h: float) -> None:
    """Base cabinets, a counter top with a sink and maybe a microwave, wall cabinets above."""
    role = p.choice(["wood_light", "white_plastic", "wood_dark"])
    cabinet(p, w, d - 0.03, h - 0.04, "kitchen cabinet", role)
    p.box((-d / 2, -w / 2, h - 0.04), (d / 2 + 0.02, w / 2, h), "kitchen counter", p.instance(), "metal")
    sink_y = p.rng.uniform(-w / 2 + 0.4, w / 2 - 0.4)
    sink_on(p, 0.0, sink_y, h, 0.55)
    if w > 1.6 and p.rng.random() < 0.8:
        y = -w / 2 + 0.3 if sink_y > 0 else w / 2 - 0.3
        micro = p.instance()
        p.box((-d / 2 + 0.05, y - 0.25, h), (-d / 2 + 0.4, y + 0.25, h + 0.3), "microwave", micro, "white_plastic")
        p.box((-d / 2 + 0.4, y - 0.22, h + 0.04), (-d / 2 + 0.41, y + 0.12, h + 0.26), "microwave", micro, "black_plastic")
    cabinet(p.moved(-d / 2 + 0.18, 0.0, z=1.45), w, 0.35, 0.7, "kitchen cabinet", role)


def trash_can(p: Piece, w: float, d: float, h: float) -> None:
    inst = p.instance()
    p.revolve(0, 0, 0, [(w * 0.4, 0.0), (w / 2, h)], "trash can", inst, p.choice(["metal", "black_plastic"]))


def dining_set(p: Piece, w: float, d: float, h: float) -> None:
    """A table with chairs around it; (w, d) is the footprint of the whole set."""
    tw, td = w - 1.0, d - 1.0
    table(p, tw, td, 0.75)
    seats = [(0.0, td / 2 + 0.22, -math.pi / 2), (0.0, -td / 2 - 0.22, math.pi / 2)]
    if tw > 1.1:
        seats += [(td / 2 + 0.22, 0.0, math.pi), (-td / 2 - 0.22, 0.0, 0.0)][: int(p.rng.integers(0, 3))]
    for x, y, yaw in seats:
        chair(p.moved(x, y, yaw), 0.42, 0.42, 0.9)


def desk_set(p: Piece, w: float, d: float, h: float) -> None:
    """A desk at the back of the footprint and an office chair in front of it."""
    desk(p.moved(-d / 2 + 0.3, 0.0), w, 0.6, 0.75)
    if p.rng.random() < 0.7:
        table_lamp(p, -d / 2 + 0.15, w / 2 - 0.2, 0.75)
    office_chair(p.moved(-d / 2 + 0.75, 0.0, math.pi), 0.55, 0.55, 1.0)


@dataclass(frozen=True)
class Kind:
    """A furniture kind: footprint width (along the wall) and depth ranges, height range, builder,
    and where it stands (`wall`: back to a wall, `free`: anywhere)."""

    build: Callable[[Piece, float, float, float], None]
    width: tuple[float, float]
    depth: tuple[float, float]
    height: tuple[float, float]
    place: str = "wall"


CATALOG: dict[str, Kind] = {
    "sofa": Kind(sofa, (1.6, 2.4), (0.85, 0.95), (0.8, 0.9)),
    "armchair": Kind(armchair, (0.75, 0.9), (0.75, 0.85), (0.8, 0.9), "free"),
    "coffee table": Kind(lambda p, w, d, h: table(p, w, d, h), (0.9, 1.2), (0.5, 0.65), (0.4, 0.45), "free"),
    "tv stand": Kind(tv_stand, (1.2, 1.8), (0.4, 0.5), (0.45, 0.55)),
    "bookshelf": Kind(bookshelf, (0.7, 1.2), (0.3, 0.35), (1.6, 2.0)),
    "plant": Kind(plant, (0.35, 0.5), (0.35, 0.5), (0.7, 1.4)),
    "floor lamp": Kind(floor_lamp, (0.35, 0.4), (0.35, 0.4), (1.5, 1.7)),
    "bed": Kind(bed, (1.4, 1.8), (2.0, 2.1), (0.9, 1.1)),
    "nightstand": Kind(nightstand, (0.4, 0.5), (0.35, 0.42), (0.5, 0.6)),
    "wardrobe": Kind(cabinet, (0.9, 1.5), (0.55, 0.62), (1.9, 2.1)),
    "desk set": Kind(desk_set, (1.1, 1.4), (1.2, 1.3), (0.75, 0.75)),
    "dining set": Kind(dining_set, (2.1, 2.6), (1.8, 2.0), (0.75, 0.75), "free"),
    "kitchen run": Kind(kitchen_run, (1.8, 3.2), (0.6, 0.62), (0.9, 0.92)),
    "refrigerator": Kind(refrigerator, (0.6, 0.75), (0.65, 0.7), (1.75, 1.95)),
    "trash can": Kind(trash_can, (0.28, 0.35), (0.28, 0.35), (0.4, 0.6)),
    "toilet": Kind(toilet, (0.42, 0.45), (0.65, 0.7), (0.75, 0.8)),
    "vanity": Kind(vanity, (0.6, 0.9), (0.45, 0.5), (0.8, 0.85)),
    "bathtub": Kind(bathtub, (1.5, 1.7), (0.7, 0.75), (0.55, 0.6)),
    "cabinet": Kind(cabinet, (0.6, 1.0), (0.4, 0.5), (0.8, 1.2)),
}

# Per room kind: (furniture kind, minimum count, maximum count), placed in this order.
RECIPES: dict[str, list[tuple[str, int, int]]] = {
    "living room": [("sofa", 1, 1), ("tv stand", 1, 1), ("coffee table", 0, 1), ("armchair", 0, 2),
                    ("bookshelf", 0, 2), ("plant", 0, 2), ("floor lamp", 0, 1), ("cabinet", 0, 1)],
    "bedroom": [("bed", 1, 1), ("nightstand", 1, 2), ("wardrobe", 0, 1), ("desk set", 0, 1), ("plant", 0, 1),
                ("trash can", 0, 1)],
    "office": [("desk set", 1, 1), ("bookshelf", 1, 2), ("cabinet", 0, 1), ("plant", 0, 2), ("floor lamp", 0, 1),
               ("armchair", 0, 1), ("trash can", 0, 1)],
    "kitchen": [("kitchen run", 1, 1), ("refrigerator", 1, 1), ("dining set", 0, 1), ("trash can", 0, 1),
                ("plant", 0, 1)],
    "bathroom": [("toilet", 1, 1), ("vanity", 1, 1), ("bathtub", 0, 1), ("trash can", 0, 1)],
}
