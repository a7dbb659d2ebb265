"""Piece: builds one piece of furniture (or building part) in its own local frame.

Local frame: origin on the floor at the footprint centre, +x = the front (the way it faces),
+y = its left, +z up; metres. The piece's transform places it in the apartment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tst.envs.procedural.builder import MeshBuilder, placement
from tst.envs.procedural.materials import Palette


@dataclass
class Piece:
    builder: MeshBuilder
    palette: Palette
    rng: np.random.Generator
    transform: np.ndarray

    def instance(self) -> int:
        return self.builder.new_instance()

    def material(self, role: str) -> int:
        material, uv_scale = self.palette[role]
        return self.builder.material(material, uv_scale)

    def box(self, lo, hi, class_name: str, instance: int, role: str) -> None:
        """Axis-aligned box lo..hi in the local frame."""
        self.builder.box(lo, hi, class_name, instance, self.material(role), self.transform)

    def cylinder(self, x: float, y: float, z: float, radius: float, height: float, class_name: str,
                 instance: int, role: str) -> None:
        """Upright cylinder with its bottom centre at local (x, y, z)."""
        self.builder.cylinder(radius, height, class_name, instance, self.material(role),
                              self.transform @ placement(x, y, 0.0, z))

    def revolve(self, x: float, y: float, z: float, profile: list[tuple[float, float]], class_name: str,
                instance: int, role: str) -> None:
        """Surface of revolution (radius, height) profile, bottom centre at local (x, y, z)."""
        self.builder.revolve(profile, class_name, instance, self.material(role),
                             self.transform @ placement(x, y, 0.0, z))

    def sphere(self, x: float, y: float, z: float, radius: float, class_name: str, instance: int,
               role: str, squash: float = 1.0) -> None:
        self.builder.sphere(radius, class_name, instance, self.material(role),
                            self.transform @ placement(x, y, 0.0, z), squash)

    def moved(self, x: float, y: float, yaw: float = 0.0, z: float = 0.0) -> "Piece":
        """The same piece with its local frame moved to local (x, y, z) and turned by `yaw` radians."""
        return Piece(self.builder, self.palette, self.rng, self.transform @ placement(x, y, yaw, z))

    def choice(self, options: list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]
