"""The mesh renderer: one open3d (Embree) ray cast per frame gives every base modality.

The cast returns, per pixel, the hit distance, the triangle id and the barycentric coordinates.
Depth comes from the distance, labels and normals from the triangle id, and colour from the
barycentrics (UV texture lookup or vertex-colour interpolation). The per-pixel step after the cast is
one numba kernel: open3d has no shading of its own, and one fused pass reads each hit's face once
(what a frame costs over the bare cast: `tst bench render`).
"""

from __future__ import annotations

import os

# Threads that busy-wait after a parallel region steal the cores Embree's threads need for the next
# cast (and the other way round); with the default spinning, the shading kernel made each frame
# ~1.8x slower than the bare cast, with passive waiting much less. Must be set before the OpenMP
# runtime starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import numpy as np  # noqa: E402
import open3d as o3d  # noqa: E402
from PIL import Image  # noqa: E402

from tst.camera import Camera  # noqa: E402
from tst.errors import TSTError  # noqa: E402
from tst.modalities import RENDERED  # noqa: E402

from tst.envs.mesh import LabeledMesh  # noqa: E402
from tst.envs.prefetch import prefetch  # noqa: E402

# OpenMP first (numba's bundled TBB check fails against open3d's older TBB and warns).
numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]

INVALID_ID = np.uint32(0xFFFFFFFF)
# Frames smaller than this are shaded on one thread: waking the shading threads right after Embree's cast
# cost more than they saved (2 cores, `tst bench render`, per frame with 2 shading threads -> 1: 128 px
# 4.19 -> 3.86 ms, 256 px 12.2 -> 9.6 ms, 512 px 28.5 -> 29.5 ms).
PARALLEL_SHADING_PIXELS = 512 * 512
MAX_TEXTURE_SIZE = 512
# How many pixels ahead the shading kernel asks for a face record (8 to 64 gave the same speed-up; asking
# for the texel as well gave none that `tst bench render` could tell from noise).
RECORD_AHEAD = 32


def _unit(vector: tuple[float, float, float]) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    return v / np.linalg.norm(v)


# Directional lights in world coordinates (z-up), pointing towards the light: a key light from
# above and a weaker fill from below on the opposite side (indoor bounce light), so walls, floor and
# ceiling facing different directions all get different brightness.
LIGHT_DIRECTIONS = np.stack([_unit((0.35, 0.25, 0.9)), _unit((-0.6, -0.45, -0.5))])
LIGHT_STRENGTHS = np.array([0.55, 0.3], dtype=np.float32)
AMBIENT = 0.38
BACKGROUND_RGB = np.array([205, 215, 230], dtype=np.float32)  # what rays that hit nothing see


@numba.njit(cache=True, fastmath=True, inline="always")
def _bilinear(atlas, texture, xa, ya, xb, yb, fx, fy, channel):
    """Channel `channel` of texture slot `texture` at a point between texels (xa..xb, ya..yb), in [0, 1]."""
    top = atlas[texture, ya, xa, channel] * (1.0 - fx) + atlas[texture, ya, xb, channel] * fx
    bottom = atlas[texture, yb, xa, channel] * (1.0 - fx) + atlas[texture, yb, xb, channel] * fx
    return (top * (1.0 - fy) + bottom * fy) / 255.0


@numba.njit(cache=True, fastmath=True, parallel=True, nogil=True)  # nogil: collection encodes beside it
def _shade_hits(prim, bary, t_hit, dirs, camera_from_world, hit_normals, faces, face_records, face_uvs,
                vertex_colors, material_texture, material_color, material_uses_vertex_colors, atlas, light_dirs,
                light_strengths, ambient, background, depth, normals, semantic, instance, rgb):
    """Fill the per-pixel outputs (all flat over N pixels) from the cast's per-pixel hits."""
    for i in numba.prange(prim.shape[0]):
        if i + RECORD_AHEAD < prim.shape[0] and prim[i + RECORD_AHEAD] != 0xFFFFFFFF:
            prefetch(face_records, prim[i + RECORD_AHEAD] * face_records.shape[1])  # envs/prefetch.py says why
        face = prim[i]
        if face == 0xFFFFFFFF:
            depth[i] = 0.0
            semantic[i] = 0
            instance[i] = 0
            for c in range(3):
                normals[i, c] = 0.0
                rgb[i, c] = background[c]
        else:
            _shade_hit(i, face, bary, t_hit, dirs, camera_from_world, hit_normals, faces, face_records,
                       face_uvs, vertex_colors, material_texture,
                       material_color, material_uses_vertex_colors, atlas, light_dirs, light_strengths,
                       ambient, depth, normals, semantic, instance, rgb)


@numba.njit(cache=True, fastmath=True, inline="always")
def _shade_hit(i, face, bary, t_hit, dirs, camera_from_world, hit_normals, faces, face_records, face_uvs,
               vertex_colors, material_texture, material_color, material_uses_vertex_colors, atlas, light_dirs,
               light_strengths, ambient, depth, normals, semantic, instance, rgb):
    """Outputs of pixel i, whose ray hit triangle `face`."""
    texture_size = atlas.shape[1]
    depth[i] = t_hit[i]
    labels = face_records[face, 0]
    semantic[i] = labels & 0xFFFF
    instance[i] = face_records[face, 1]
    # Surface normal, flipped to face the camera, then rotated into the camera frame.
    nx, ny, nz = hit_normals[i, 0], hit_normals[i, 1], hit_normals[i, 2]
    if nx * dirs[i, 0] + ny * dirs[i, 1] + nz * dirs[i, 2] > 0.0:
        nx, ny, nz = -nx, -ny, -nz
    for c in range(3):
        normals[i, c] = camera_from_world[c, 0] * nx + camera_from_world[c, 1] * ny + camera_from_world[c, 2] * nz
    # Albedo: texture, vertex colours or the flat material colour.
    b1, b2 = bary[i, 0], bary[i, 1]
    b0 = 1.0 - b1 - b2
    material = (labels >> 16) & 0xFFFF
    texture = material_texture[material]
    r, g, b = material_color[material, 0], material_color[material, 1], material_color[material, 2]
    if texture >= 0:
        u = b0 * face_uvs[face, 2] + b1 * face_uvs[face, 4] + b2 * face_uvs[face, 6]
        v = b0 * face_uvs[face, 3] + b1 * face_uvs[face, 5] + b2 * face_uvs[face, 7]
        # Bilinear lookup with wrap-around; v runs up the image.
        x = u * texture_size - 0.5
        y = (1.0 - v) * texture_size - 0.5
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = x - x0, y - y0
        xa = int(x0 - np.floor(x0 / texture_size) * texture_size)  # wrap into 0..T-1
        ya = int(y0 - np.floor(y0 / texture_size) * texture_size)
        xb = xa + 1 if xa + 1 < texture_size else 0
        yb = ya + 1 if ya + 1 < texture_size else 0
        r *= _bilinear(atlas, texture, xa, ya, xb, yb, fx, fy, 0)
        g *= _bilinear(atlas, texture, xa, ya, xb, yb, fx, fy, 1)
        b *= _bilinear(atlas, texture, xa, ya, xb, yb, fx, fy, 2)
    elif material_uses_vertex_colors[material]:
        v0, v1, v2 = faces[face, 0], faces[face, 1], faces[face, 2]
        r = (b0 * vertex_colors[v0, 0] + b1 * vertex_colors[v1, 0] + b2 * vertex_colors[v2, 0]) / 255.0
        g = (b0 * vertex_colors[v0, 1] + b1 * vertex_colors[v1, 1] + b2 * vertex_colors[v2, 1]) / 255.0
        b = (b0 * vertex_colors[v0, 2] + b1 * vertex_colors[v1, 2] + b2 * vertex_colors[v2, 2]) / 255.0
    shade = ambient
    for light in range(light_dirs.shape[0]):
        lambert = nx * light_dirs[light, 0] + ny * light_dirs[light, 1] + nz * light_dirs[light, 2]
        if lambert > 0.0:
            shade += light_strengths[light] * lambert
    rgb[i, 0] = min(255.0, r * shade * 255.0)
    rgb[i, 1] = min(255.0, g * shade * 255.0)
    rgb[i, 2] = min(255.0, b * shade * 255.0)


@numba.njit(cache=True, nogil=True)
def _world_rays(camera_rays, rotation, origin, rays):
    """Fill rays (N, 6) with origin and rotation @ direction. Written out instead of a numpy matmul:
    a BLAS call this small leaves OpenBLAS threads spinning on the other cores, which halves the
    throughput of parallel render processes."""
    for i in range(camera_rays.shape[0]):
        for r in range(3):
            rays[i, r] = origin[r]
            rays[i, 3 + r] = (rotation[r, 0] * camera_rays[i, 0] + rotation[r, 1] * camera_rays[i, 1]
                              + rotation[r, 2] * camera_rays[i, 2])


def _texture_atlas(mesh: LabeledMesh) -> tuple[np.ndarray, np.ndarray]:
    """All material textures resized to one square size: (M, T, T, 3) uint8 and material -> slot (-1 none)."""
    textured = [i for i, m in enumerate(mesh.materials) if m.texture is not None and mesh.corner_uvs is not None]
    slots = np.full(len(mesh.materials), -1, dtype=np.int32)
    if not textured:
        return np.zeros((1, 1, 1, 3), np.uint8), slots
    size = min(MAX_TEXTURE_SIZE, max(max(mesh.materials[i].texture.shape[:2]) for i in textured))
    atlas = np.empty((len(textured), size, size, 3), dtype=np.uint8)
    for slot, index in enumerate(textured):
        texture = np.asarray(mesh.materials[index].texture)
        if texture.ndim == 2:
            texture = np.repeat(texture[..., None], 3, axis=-1)
        image = Image.fromarray(np.ascontiguousarray(texture[..., :3]).astype(np.uint8))
        atlas[slot] = np.asarray(image.resize((size, size), Image.BILINEAR))
        slots[index] = slot
    return atlas, slots


def _face_records(mesh: LabeledMesh) -> np.ndarray:
    """(F, 8) int32, 32 bytes per face (two to a cache line): class | material << 16, instance, then the
    six corner UVs as float32 bits (read through a float32 view). The shading kernel is bound by these
    per-hit lookups: one record per face instead of four separate arrays made it ~1.5x faster."""
    if len(mesh.materials) > 0xFFFF:
        raise TSTError(f"mesh: {len(mesh.materials)} materials; the renderer takes at most {0xFFFF}")
    records = np.zeros((mesh.num_faces, 8), np.int32)
    records[:, 0] = mesh.face_class.astype(np.int32) | (mesh.face_material.astype(np.int32) << 16)
    records[:, 1] = mesh.face_instance.view(np.int32)
    if mesh.corner_uvs is not None:
        records.view(np.float32)[:, 2:8] = mesh.corner_uvs.reshape(-1, 6)
    return records


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F, 3) float32 unit normals (right-hand rule); degenerate faces get zeros."""
    v0, v1, v2 = (vertices[faces[:, k]].astype(np.float64) for k in range(3))
    normals = np.cross(v1 - v0, v2 - v0)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return (normals / np.where(length > 0, length, 1.0)).astype(np.float32)


class MeshRenderer:
    """Renders a LabeledMesh from pinhole cameras with one ray cast per frame.

    nthreads: Embree threads per cast (0 = all cores; 1 when several processes render in parallel).
    """

    def __init__(self, mesh: LabeledMesh, nthreads: int = 0):
        mesh.validate("mesh")
        self.mesh = mesh
        self.nthreads = int(nthreads)
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.faces.astype(np.uint32)))
        self.face_normals = face_normals(mesh.vertices, mesh.faces)
        self.face_records = _face_records(mesh)
        self.atlas, self.material_texture = _texture_atlas(mesh)
        self.material_color = np.array([m.color for m in mesh.materials], dtype=np.float32).reshape(-1, 3)
        self.material_uses_vertex_colors = np.array(
            [m.vertex_colors and mesh.vertex_colors is not None for m in mesh.materials], dtype=np.bool_
        )
        self.vertex_colors = mesh.vertex_colors if mesh.vertex_colors is not None else np.zeros((1, 3), np.uint8)
        self.instance_dtype = np.uint16 if mesh.face_instance.max(initial=0) < 2**16 else np.uint32
        self._ray_cache: dict[tuple, np.ndarray] = {}

    def _camera_rays(self, camera: Camera) -> np.ndarray:
        """(H*W, 3) float32 ray directions in the camera frame with z = 1, through pixel centres."""
        key = (camera.width, camera.height, camera.K.tobytes())
        if key not in self._ray_cache:
            u, v = np.meshgrid(np.arange(camera.width) + 0.5, np.arange(camera.height) + 0.5)
            pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
            self._ray_cache[key] = (pixels @ np.linalg.inv(camera.K).T).astype(np.float32)
        return self._ray_cache[key]

    def cast(self, camera: Camera) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The bare ray cast: (open3d's per-pixel results as flat numpy arrays, world ray directions (N, 3))."""
        camera_rays = self._camera_rays(camera)
        rays = np.empty((len(camera_rays), 6), dtype=np.float32)
        _world_rays(camera_rays, camera.rotation.astype(np.float32), camera.position.astype(np.float32), rays)
        hits = self.scene.cast_rays(o3d.core.Tensor(rays), nthreads=self.nthreads)
        names = ("t_hit", "primitive_ids", "primitive_uvs", "primitive_normals")
        return {name: hits[name].numpy() for name in names}, rays[:, 3:]

    def render(self, camera: Camera, modalities: tuple[str, ...] = RENDERED) -> dict[str, np.ndarray]:
        """Render `modalities` (a subset of rgb, depth, normals, semantic, instance) for `camera`.

        Returns rgb (H, W, 3) uint8; depth (H, W) float32 z-depth in metres, 0 = no hit; normals
        (H, W, 3) float32 unit vectors in the camera frame facing the camera; semantic (H, W) uint16;
        instance (H, W) uint16 (uint32 when the mesh has 65536+ instances).
        """
        unknown = [m for m in modalities if m not in RENDERED]
        if unknown:
            raise TSTError(f"render: cannot render {unknown}; a mesh renders {', '.join(RENDERED)}")
        hits, directions = self.cast(camera)
        n = len(directions)
        threads = self.nthreads if self.nthreads > 0 else numba.config.NUMBA_NUM_THREADS
        numba.set_num_threads(threads if n >= PARALLEL_SHADING_PIXELS else 1)
        depth = np.empty(n, np.float32)
        normals = np.empty((n, 3), np.float32)
        semantic = np.empty(n, np.uint16)
        instance = np.empty(n, self.instance_dtype)
        rgb = np.empty((n, 3), np.uint8)
        m = self.mesh
        _shade_hits(
            hits["primitive_ids"], hits["primitive_uvs"], hits["t_hit"], directions,
            camera.rotation.T.astype(np.float32), hits["primitive_normals"], m.faces, self.face_records,
            self.face_records.view(np.float32), self.vertex_colors, self.material_texture, self.material_color,
            self.material_uses_vertex_colors, self.atlas, LIGHT_DIRECTIONS, LIGHT_STRENGTHS,
            np.float32(AMBIENT), BACKGROUND_RGB, depth, normals, semantic, instance, rgb,
        )
        shape = (camera.height, camera.width)
        outputs = {
            "rgb": rgb.reshape(*shape, 3),
            "depth": depth.reshape(shape),
            "normals": normals.reshape(*shape, 3),
            "semantic": semantic.reshape(shape),
            "instance": instance.reshape(shape),
        }
        return {name: outputs[name] for name in modalities}
