"""A rendered or captured observation: a camera, one array per modality, and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tst.camera import Camera


@dataclass
class Frame:
    """One observation.

    modalities: modality name -> data, in the units of the modality registry (rgb uint8 HxWx3,
    depth float32 HxW metres with 0 = no hit, normals float32 HxWx3 camera frame, semantic and
    instance uint16 HxW with 0 = unlabeled/none, boxes a list, caption a str).
    meta: space, split, path_id, step and anything else a stage wants to carry.
    """

    camera: Camera
    modalities: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.modalities[name]

    def __contains__(self, name: str) -> bool:
        return name in self.modalities
