"""Label maps: how a mesh file's parts get classes and instances.

A label map is a YAML or JSON file:

    classes: [wall, floor, chair, ...]   # optional custom taxonomy (names, or {name, thing}); default INDOOR
    match:                               # ordered glob patterns (case-insensitive) on node, mesh and
      "Chair*": chair                    # material names -> class; the first match wins
      "*wall*": wall
    face_class: label                    # optional PLY face property holding class ids
    face_class_names: [unlabeled, wall]  # optional: names of those ids (default: ids are taxonomy ids)
    face_instance: object_id             # optional PLY face property holding instance ids
    instances: connected                 # connected (default) | node: how parts become object instances
    instance_gap: 0.05                   # metres: same-class parts this close are one object (connected)

A part (a mesh node) whose names match no pattern takes the class of its nearest ancestor node that
matches one, so `"Sofa*": sofa` labels a node `Sofa` and its unnamed children. Parts that match nothing
and have no face attribute are unlabeled (class 0). With `instances: connected`, parts of one class whose
bounding boxes touch or come within `instance_gap` are one instance (a sofa of three nodes is one sofa);
`instances: node` makes every node its own instance. A `face_instance` property overrides both.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tst.errors import TSTError
from tst.taxonomy import INDOOR, SemanticClass, Taxonomy, is_stuff_name


@dataclass
class LabelMap:
    taxonomy: Taxonomy = field(default_factory=lambda: INDOOR)
    patterns: list[tuple[str, int]] = field(default_factory=list)  # (glob, class id)
    face_class: str | None = None
    face_class_ids: dict[int, int] | None = None  # file id -> taxonomy id
    face_instance: str | None = None
    source: str | None = None  # the label map file, for errors
    instances: str = "connected"  # connected | node
    instance_gap: float = 0.05  # metres

    def class_for(self, *names: str | None) -> int:
        """Class id of the first pattern matching any of `names` (node, mesh, material), else 0."""
        for pattern, class_id in self.patterns:
            if any(name and fnmatch.fnmatch(name.lower(), pattern.lower()) for name in names):
                return class_id
        return 0


KEYS = ("classes", "match", "face_class", "face_class_names", "face_instance", "instances", "instance_gap")


def _taxonomy(entries: object, source: str) -> Taxonomy:
    if not isinstance(entries, list) or not entries:
        raise TSTError(f"{source}: 'classes' must be a non-empty list of class names")
    classes = []
    for entry in entries:
        if isinstance(entry, str):  # stuff if a known stuff name, however it is spelled; else a thing
            classes.append(SemanticClass(entry, not is_stuff_name(entry)))
        elif isinstance(entry, dict) and "name" in entry:
            classes.append(SemanticClass(str(entry["name"]), bool(entry.get("thing", True))))
        else:
            raise TSTError(f"{source}: class entry {entry!r} must be a name or {{name, thing}}")
    return Taxonomy(classes)


def load_label_map(path: str | Path | None) -> LabelMap:
    """Read a label map file; None gives the default (INDOOR taxonomy, no rules)."""
    if path is None:
        return LabelMap()
    path = Path(path)
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise TSTError(f"space.labels: {path} {state}; expected a YAML or JSON label map")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise TSTError(f"{path}: not a readable YAML/JSON label map ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TSTError(f"{path}: expected a mapping with 'match', 'classes', 'face_class' or 'face_instance'")
    unknown = set(data) - set(KEYS)
    if unknown:
        raise TSTError(f"{path}: unknown key(s) {sorted(unknown)}; expected {', '.join(KEYS)}")
    taxonomy = _taxonomy(data["classes"], str(path)) if "classes" in data else INDOOR
    match = data.get("match") or {}
    if not isinstance(match, dict):
        raise TSTError(f"{path}: 'match' must map name patterns to class names")
    patterns = [(str(p), taxonomy.id(str(c), f"{path}: match '{p}'")) for p, c in match.items()]
    for key in ("face_class", "face_instance"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise TSTError(f"{path}: {key}: expected the name of a PLY face property, got {data[key]!r}")
    names, ids = data.get("face_class_names"), None
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TSTError(f"{path}: face_class_names: expected a list of class names (index = id in the file), "
                           f"got {names!r}")
        ids = {i: taxonomy.id(n, f"{path}: face_class_names[{i}]") for i, n in enumerate(names)}
    instances = data.get("instances", "connected")
    if instances not in ("connected", "node"):
        raise TSTError(f"{path}: instances: expected connected or node, got {instances!r}")
    gap = data.get("instance_gap", 0.05)
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not 0 <= gap <= 10:
        raise TSTError(f"{path}: instance_gap: expected a distance in metres between 0 and 10, got {gap!r}")
    return LabelMap(taxonomy, patterns, data.get("face_class"), ids, data.get("face_instance"), str(path),
                    instances, float(gap))
