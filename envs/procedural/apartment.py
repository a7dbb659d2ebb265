"""Procedural apartments: the embedded default test space. One seed, one apartment, always the same."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tst.errors import TSTError
from tst.taxonomy import INDOOR, Taxonomy

from tst.envs.mesh import LabeledMesh
from tst.envs.mesh_space import MeshSpace
from tst.envs.procedural.builder import MeshBuilder
from tst.envs.procedural.furnish import furnish
from tst.envs.procedural.layout import Room, plan_apartment
from tst.envs.procedural.materials import make_palette
from tst.envs.procedural.parts import Piece
from tst.envs.procedural.structure import build_openings, build_room_shell


@dataclass
class Apartment:
    """A generated apartment: its mesh (labels in `taxonomy`), rooms and ceiling height (metres)."""

    seed: int
    mesh: LabeledMesh
    rooms: list[Room]
    height: float
    taxonomy: Taxonomy

    def stats(self) -> dict:
        instance_classes = self.mesh.instance_classes()
        things = sum(1 for c in instance_classes.values() if self.taxonomy.is_thing(c))
        return {"triangles": self.mesh.num_faces, "instances": len(instance_classes), "object_instances": things,
                "rooms": [room.kind for room in self.rooms]}


def generate(seed: int, max_edge: float = 0.1, segments: int = 16,
             rooms: tuple[int, int] = (4, 6)) -> Apartment:
    """Build apartment number `seed`.

    max_edge: metres; large faces are tessellated into triangles no longer than this (the triangle
    count grows roughly with 1 / max_edge²). segments: facets around cylinders and spheres.
    rooms: inclusive range of the number of rooms.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TSTError(f"space.seed: expected a non-negative integer, got {seed!r}")
    if not max_edge > 0:
        raise TSTError(f"space.max_edge: expected a positive length in metres, got {max_edge}")
    if not 1 <= rooms[0] <= rooms[1]:
        raise TSTError(f"space.rooms: expected [min, max] with 1 <= min <= max, got {list(rooms)}")
    rng = np.random.default_rng([int(seed), 0x7E57])
    height = float(rng.uniform(2.5, 2.8))
    plan = plan_apartment(rng, int(rng.integers(rooms[0], rooms[1] + 1)), height)
    builder = MeshBuilder(INDOOR, max_edge=max_edge, segments=segments)
    piece = Piece(builder, make_palette(rng), rng, np.eye(4))
    for room in plan:
        build_room_shell(piece, room, height)
        build_openings(piece, room)
        furnish(room, piece)
    return Apartment(int(seed), builder.build(), plan, height, INDOOR)


class ProceduralSpace(MeshSpace):
    """`space=procedural space.seed=N`: apartment N rendered by ray casting."""

    def __init__(self, seed: int = 0, max_edge: float = 0.1, segments: int = 16,
                 rooms: tuple[int, int] = (4, 6), nthreads: int = 0):
        self.apartment = generate(seed, max_edge, segments, tuple(rooms))
        super().__init__(f"procedural-{seed}", self.apartment.mesh, self.apartment.taxonomy, nthreads)

    @property
    def rooms(self) -> list[Room]:
        return self.apartment.rooms

    def region_at(self, point: np.ndarray) -> str | None:
        x, y = float(point[0]), float(point[1])
        for room in self.rooms:
            r = room.rect
            if r.x0 <= x <= r.x1 and r.y0 <= y <= r.y1:
                return room.kind
        return None
