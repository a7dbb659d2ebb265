"""Apartment floor plans: a rectangle split into rooms (binary space partition), doors, windows.

Coordinates are metres in the floor plane (x, y); the floor is z = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_ROOM_SIDE = 2.4  # metres
DOOR_WIDTH = 0.9
DOOR_HEIGHT = 2.05
WALL_THICKNESS = 0.12  # a room's wall slab is half of this on shared walls


@dataclass(frozen=True)
class Rect:
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def depth(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return self.width * self.depth

    def shrink(self, margin: float) -> Rect:
        return Rect(self.x0 + margin, self.y0 + margin, self.x1 - margin, self.y1 - margin)

    def overlaps(self, other: Rect, margin: float = 0.0) -> bool:
        return (self.x0 < other.x1 + margin and other.x0 < self.x1 + margin
                and self.y0 < other.y1 + margin and other.y0 < self.y1 + margin)

    def contains(self, other: Rect) -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and other.x1 <= self.x1 and other.y1 <= self.y1


@dataclass
class Opening:
    """A hole in a wall side: a door or a window. lo/hi: metres along the side's axis;
    bottom/top: metres above the floor."""

    kind: str  # "door" | "window"
    lo: float
    hi: float
    bottom: float
    top: float
    shared: bool = False  # a door between two rooms (not to the outside)

    @property
    def centre(self) -> float:
        return (self.lo + self.hi) / 2


@dataclass
class Side:
    """One of a room's four walls, seen from inside.

    axis: "x" when the wall runs along x (at y = coord), "y" when it runs along y (at x = coord).
    inward: +1 or -1, the direction into the room along the other axis.
    lo/hi: the wall's extent along its axis. exterior: faces the outside of the apartment.
    """

    axis: str
    coord: float
    inward: int
    lo: float
    hi: float
    openings: list[Opening] = field(default_factory=list)
    exterior_spans: list[tuple[float, float]] = field(default_factory=list)

    @property
    def length(self) -> float:
        return self.hi - self.lo

    def point(self, along: float, offset: float) -> np.ndarray:
        """(x, y) of the point `along` the axis and `offset` metres into the room from the wall line."""
        if self.axis == "x":
            return np.array([along, self.coord + self.inward * offset])
        return np.array([self.coord + self.inward * offset, along])

    @property
    def facing_yaw(self) -> float:
        """Yaw (radians) of the direction into the room; furniture backed on this wall faces it."""
        if self.axis == "x":
            return np.pi / 2 if self.inward > 0 else -np.pi / 2
        return 0.0 if self.inward > 0 else np.pi


@dataclass
class Room:
    index: int
    kind: str  # living room, kitchen, bedroom, bathroom, office
    rect: Rect
    sides: list[Side] = field(default_factory=list)

    @property
    def inner(self) -> Rect:
        """The free floor inside the wall slabs."""
        return self.rect.shrink(WALL_THICKNESS / 2)


def _split(rect: Rect, rng: np.random.Generator) -> tuple[Rect, Rect] | None:
    """Cut `rect` across its longer side at 35-65 %, or None when the pieces would be too small."""
    along_x = rect.width >= rect.depth
    length = rect.width if along_x else rect.depth
    if length < 2 * MIN_ROOM_SIDE:
        return None
    low = max(0.35, MIN_ROOM_SIDE / length)
    cut = rng.uniform(low, 1 - low) * length
    cut = round(cut * 4) / 4  # quarter-metre grid, like real floor plans
    if along_x:
        return Rect(rect.x0, rect.y0, rect.x0 + cut, rect.y1), Rect(rect.x0 + cut, rect.y0, rect.x1, rect.y1)
    return Rect(rect.x0, rect.y0, rect.x1, rect.y0 + cut), Rect(rect.x0, rect.y0 + cut, rect.x1, rect.y1)


def partition(rng: np.random.Generator, num_rooms: int) -> list[Rect]:
    """Room rectangles tiling an apartment footprint of about 15 m² per room."""
    area = num_rooms * rng.uniform(13, 18)
    aspect = rng.uniform(1.1, 1.7)
    width = round(np.sqrt(area * aspect) * 4) / 4
    depth = round(area / width * 4) / 4
    rects = [Rect(0.0, 0.0, width, depth)]
    while len(rects) < num_rooms:
        rects.sort(key=lambda r: r.area, reverse=True)
        for i, rect in enumerate(rects):
            pieces = _split(rect, rng)
            if pieces:
                rects[i:i + 1] = list(pieces)
                break
        else:
            break
    return rects


ROOM_KINDS = ["living room", "kitchen", "bathroom", "bedroom"]
EXTRA_ROOM_KINDS = ["bedroom", "office"]


def assign_kinds(rects: list[Rect], rng: np.random.Generator) -> list[str]:
    """Largest room = living room, smallest = bathroom, then kitchen and bedrooms/offices."""
    order = sorted(range(len(rects)), key=lambda i: rects[i].area, reverse=True)
    kinds = [""] * len(rects)
    kinds[order[0]] = "living room"
    kinds[order[-1]] = "bathroom"
    middle = order[1:-1]
    wanted = ["bedroom", "kitchen"] + [EXTRA_ROOM_KINDS[int(rng.integers(2))] for _ in middle[2:]]
    for i, kind in zip(middle, wanted):
        kinds[i] = kind
    return kinds


def _shared_span(a: Rect, b: Rect) -> tuple[str, float, float, float] | None:
    """(axis, coord, lo, hi) of the wall two rooms share, or None."""
    eps = 1e-6
    for coord_a, coord_b, axis in ((a.x1, b.x0, "y"), (a.x0, b.x1, "y"), (a.y1, b.y0, "x"), (a.y0, b.y1, "x")):
        if abs(coord_a - coord_b) < eps:
            lo, hi = ((max(a.y0, b.y0), min(a.y1, b.y1)) if axis == "y" else (max(a.x0, b.x0), min(a.x1, b.x1)))
            if hi - lo > eps:
                return axis, coord_a, lo, hi
    return None


def _sides(rect: Rect) -> list[Side]:
    return [
        Side("x", rect.y0, +1, rect.x0, rect.x1), Side("x", rect.y1, -1, rect.x0, rect.x1),
        Side("y", rect.x0, +1, rect.y0, rect.y1), Side("y", rect.x1, -1, rect.y0, rect.y1),
    ]


def _side_at(room: Room, axis: str, coord: float) -> Side:
    return next(s for s in room.sides if s.axis == axis and abs(s.coord - coord) < 1e-6)


def _subtract(span: tuple[float, float], holes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    pieces = [span]
    for lo, hi in holes:
        pieces = [p for a, b in pieces for p in ((a, min(b, lo)), (max(a, hi), b)) if p[1] - p[0] > 1e-6]
    return pieces


def plan_apartment(rng: np.random.Generator, num_rooms: int, height: float) -> list[Room]:
    """Rooms with their four sides, doors connecting every room, windows on exterior walls."""
    rects = partition(rng, num_rooms)
    kinds = assign_kinds(rects, rng)
    rooms = [Room(i, kind, rect, _sides(rect)) for i, (kind, rect) in enumerate(zip(kinds, rects))]
    # Shared walls, and which parts of each side are exterior.
    adjacency: dict[tuple[int, int], tuple[str, float, float, float]] = {}
    for i, a in enumerate(rooms):
        for j in range(i + 1, len(rooms)):
            span = _shared_span(a.rect, rooms[j].rect)
            if span:
                adjacency[(i, j)] = span
    for room in rooms:
        for side in room.sides:
            holes = [(lo, hi) for (i, j), (axis, coord, lo, hi) in adjacency.items()
                     if room.index in (i, j) and axis == side.axis and abs(coord - side.coord) < 1e-6]
            side.exterior_spans = _subtract((side.lo, side.hi), holes)
    # Doors: a random spanning tree from the living room over walls long enough for a door.
    usable = {pair: span for pair, span in adjacency.items() if span[3] - span[2] >= DOOR_WIDTH + 0.6}
    connected = {kinds.index("living room")}
    while len(connected) < len(rooms):
        frontier = [pair for pair in usable if (pair[0] in connected) != (pair[1] in connected)]
        if not frontier:
            break
        pair = frontier[int(rng.integers(len(frontier)))]
        axis, coord, lo, hi = usable[pair]
        centre = rng.uniform(lo + 0.3 + DOOR_WIDTH / 2, hi - 0.3 - DOOR_WIDTH / 2)
        for index in pair:
            _side_at(rooms[index], axis, coord).openings.append(
                Opening("door", centre - DOOR_WIDTH / 2, centre + DOOR_WIDTH / 2, 0.0, DOOR_HEIGHT, shared=True))
        connected.update(pair)
    # Windows on exterior walls (bathrooms get a small high one), and the entrance door.
    for room in rooms:
        for side in room.sides:
            for lo, hi in side.exterior_spans:
                if hi - lo < 1.6 or rng.random() < 0.25:
                    continue
                width = min(rng.uniform(0.8, 1.6), hi - lo - 0.8) if room.kind != "bathroom" else 0.6
                centre = rng.uniform(lo + 0.4 + width / 2, hi - 0.4 - width / 2)
                bottom = 1.4 if room.kind == "bathroom" else rng.uniform(0.75, 0.95)
                top = min(height - 0.3, bottom + (0.6 if room.kind == "bathroom" else rng.uniform(1.0, 1.4)))
                if not any(abs(o.centre - centre) < (o.hi - o.lo + width) / 2 + 0.3 for o in side.openings):
                    side.openings.append(Opening("window", centre - width / 2, centre + width / 2, bottom, top))
    entrance_room = rooms[kinds.index("living room")]
    for side in entrance_room.sides:
        spans = [s for s in side.exterior_spans if s[1] - s[0] >= DOOR_WIDTH + 0.8]
        free = [s for s in spans if not any(o.lo < s[1] and s[0] < o.hi for o in side.openings)]
        if free:
            lo, hi = free[0]
            centre = rng.uniform(lo + 0.4 + DOOR_WIDTH / 2, hi - 0.4 - DOOR_WIDTH / 2)
            side.openings.append(Opening("door", centre - DOOR_WIDTH / 2, centre + DOOR_WIDTH / 2, 0.0, DOOR_HEIGHT))
            break
    return rooms
