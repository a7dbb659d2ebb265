"""Top-down floor plans of mesh spaces, with camera positions and headings drawn on top."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d
from PIL import Image, ImageDraw, ImageFont

from tst.camera import Camera
from tst.visualize import class_palette

from tst.envs.mesh_space import MeshSpace

MAX_PIXELS = 1600
DARK_CLASSES = ("wall", "doorframe", "window frame")  # drawn black, like the cut walls of a plan
HIDDEN_CLASSES = ("ceiling", "ceiling lamp")


def _class_ids(space: MeshSpace, names: tuple[str, ...]) -> list[int]:
    return [space.taxonomy.id(n) for n in names if n in space.taxonomy.names]


def _first_visible_hits(space: MeshSpace, rays: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per downward ray: face id (or -1) and drop in metres of the first hit that is not a ceiling
    and faces up (a single-sided scanned ceiling seen from above faces away), and whether the ray
    passes through any wall-like face at all (wall tops can be coplanar with ceilings)."""
    hits = space.renderer.scene.list_intersections(o3d.core.Tensor(rays.reshape(-1, 6)))
    ray_ids, t_hit = hits["ray_ids"].numpy(), hits["t_hit"].numpy()
    faces = hits["primitive_ids"].numpy().astype(np.int64)
    dark = np.zeros(rays.shape[0] * rays.shape[1], bool)
    dark[ray_ids[np.isin(space.mesh.face_class[faces], _class_ids(space, DARK_CLASSES))]] = True
    keep = ~np.isin(space.mesh.face_class[faces], _class_ids(space, HIDDEN_CLASSES))
    keep &= space.renderer.face_normals[faces, 2] > 0
    ray_ids, t_hit, faces = ray_ids[keep], t_hit[keep], faces[keep]
    order = np.lexsort((t_hit, ray_ids))
    first = order[np.unique(ray_ids[order], return_index=True)[1]]
    face = np.full(rays.shape[0] * rays.shape[1], -1)
    drop = np.zeros(face.shape, np.float32)
    face[ray_ids[first]], drop[ray_ids[first]] = faces[first], t_hit[first]
    return face.reshape(rays.shape[:2]), drop.reshape(rays.shape[:2]), dark.reshape(rays.shape[:2])


@dataclass
class Track:
    """Cameras to draw on a plan: dots with a heading line in `colour`; consecutive cameras with the
    same path id (>= 0) joined by a line; numbered when `numbered`; `label` goes in the legend."""

    cameras: list[Camera]
    colour: tuple[int, int, int] = (220, 0, 0)
    label: str | None = None
    path_ids: list[int] | None = None
    numbered: bool = False


def floor_plan(space: MeshSpace, tracks: list[Track] = (), pixels_per_metre: float = 48.0) -> Image.Image:
    """An orthographic view from above with ceilings removed, coloured by semantic class and darker
    the lower a surface is; walls, door and window frames black; camera tracks drawn on top."""
    (x0, y0, z0), (x1, y1, z1) = space.bounds
    scale = min(pixels_per_metre, MAX_PIXELS / max(x1 - x0, y1 - y0))
    width, height = int(np.ceil((x1 - x0) * scale)) + 1, int(np.ceil((y1 - y0) * scale)) + 1
    xs = x0 + (np.arange(width) + 0.5) / scale
    ys = y1 - (np.arange(height) + 0.5) / scale  # image rows run towards -y so +y is up
    gx, gy = np.meshgrid(xs, ys)
    rays = np.zeros((height, width, 6), np.float32)
    rays[..., 0], rays[..., 1], rays[..., 2], rays[..., 5] = gx, gy, z1 + 1.0, -1.0
    face, drop, dark = _first_visible_hits(space, rays)
    hit = face >= 0
    classes = np.where(hit, space.mesh.face_class[np.maximum(face, 0)], 0)
    colour = class_palette(space.taxonomy.names).astype(np.float32)[classes]
    relative = (drop - 1.0) / max(z1 - z0, 1e-6)  # 0 at the top of the space, 1 at the bottom
    colour *= (1.0 - 0.45 * np.clip(relative, 0, 1))[..., None]
    colour[~hit] = 255
    colour[dark] = 25
    image = Image.fromarray(colour.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()

    def pixel(point: np.ndarray) -> tuple[float, float]:
        return (point[0] - x0) * scale, (y1 - point[1]) * scale

    for track_index, track in enumerate(tracks):
        colour = tuple(track.colour)
        radius = 4 if track.numbered else 2
        ids = track.path_ids or [-1] * len(track.cameras)
        for index, camera in enumerate(track.cameras):
            px, py = pixel(camera.position)
            if index and ids[index] >= 0 and ids[index] == ids[index - 1]:
                draw.line([pixel(track.cameras[index - 1].position), (px, py)], fill=colour, width=1)
            forward = camera.rotation[:, 2]
            length = (0.5 if track.numbered else 0.25) * scale
            draw.line([px, py, px + forward[0] * length, py - forward[1] * length], fill=colour, width=1)
            draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=colour)
            if track.numbered:
                draw.text((px + 5, py + 3), str(index), fill=colour, font=font)
        if track.label:
            draw.rectangle([4, 4 + 14 * track_index, 14, 14 + 14 * track_index], fill=colour)
            draw.text((18, 3 + 14 * track_index), track.label, fill=(0, 0, 0), font=font)
    return image
