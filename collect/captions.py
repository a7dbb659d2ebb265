"""Captions generated from what a frame actually shows: room type, salient objects, counts, colours
and materials, and coarse left/right/front relations. Only visible objects are ever mentioned."""

from __future__ import annotations

import colorsys
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from tst.taxonomy import Taxonomy

NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
IRREGULAR_PLURALS = {"bookshelf": "bookshelves", "shelf": "shelves", "office chair": "office chairs"}
MATERIAL_WORDS = {"wood": "wooden", "fabric": "fabric", "linen": "linen", "metal": "metal", "ceramic": "ceramic",
                  "glass": "glass", "plastic": "plastic", "tile": "tiled", "leaves": "leafy"}
ROOM_PHRASES = ["a {room}", "the {room}", "a small {room}", "an indoor {room}"]
OPENINGS = ["A view of {room} with {objects}.", "This is {room} containing {objects}.",
            "{Room} with {objects}.", "Inside {room}: {objects}.", "A photo of {room} showing {objects}."]
OPENINGS_NO_ROOM = ["A view of a room with {objects}.", "An indoor scene with {objects}.",
                    "A room containing {objects}.", "The camera sees {objects}."]
RELATIONS = ["The {a} is to the left of the {b}.", "To the right of the {a} there is the {b}.",
             "The {b} stands right of the {a}."]
POSITIONS = {"left": ["on the left", "at the left side"], "right": ["on the right", "at the right side"],
             "centre": ["in the middle", "in the centre of the view"]}
DEPTHS = {"near": ["in the foreground", "close to the camera"], "far": ["in the background", "further back"]}


_SIDE_WORD = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def mirrored(caption: str) -> str:
    """The caption of the horizontally flipped frame: every "left" and "right" swapped, case kept. Every
    other phrase (objects, counts, colours, centre, near/far) is unchanged by a horizontal flip."""
    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.capitalize() if word[0].isupper() else other
    return _SIDE_WORD.sub(swap, caption)


def plural(name: str) -> str:
    if name in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[name]
    return name + ("es" if name.endswith(("s", "sh", "ch", "x")) else "s")


def colour_name(rgb: np.ndarray) -> str:
    """A plain colour word for a mean (3,) RGB colour in 0..255."""
    h, s, v = colorsys.rgb_to_hsv(*(np.asarray(rgb, float) / 255.0))
    if v < 0.2:
        return "black"
    if s < 0.15:
        return "white" if v > 0.8 else "grey"
    if s < 0.35 and 0.05 < h < 0.17:
        return "beige"
    for limit, name in ((0.04, "red"), (0.1, "orange"), (0.17, "yellow"), (0.45, "green"), (0.7, "blue"),
                        (0.83, "purple"), (0.95, "pink"), (1.01, "red")):
        if h < limit:
            return "brown" if name in ("orange", "red") and v < 0.6 else name
    return "grey"


def material_word(material_name: str | None) -> str | None:
    if not material_name:
        return None
    for key, word in MATERIAL_WORDS.items():
        if key in material_name.lower():
            return word
    return None


@dataclass
class VisibleObject:
    """A visible thing instance: class name, pixel count, mean colour name, box centre (x, in 0..1 of
    the width), mean depth (metres) and material name (or None)."""

    name: str
    pixels: int
    colour: str
    centre_x: float
    depth: float
    material: str | None


def visible_objects(rgb: np.ndarray, depth: np.ndarray, boxes: list, taxonomy: Taxonomy,
                    instance: np.ndarray, materials: dict[int, str]) -> list[VisibleObject]:
    """One entry per box (boxes are the visible thing instances), largest first. Per-instance mean
    colour and depth come from one bincount pass over the image."""
    if not boxes:
        return []
    ids = instance.ravel().astype(np.int64)
    size = int(ids.max()) + 1
    pixels = np.maximum(np.bincount(ids, minlength=size), 1)
    colours = np.stack([np.bincount(ids, rgb[..., c].ravel(), size) for c in range(3)], 1) / pixels[:, None]
    depths = np.bincount(ids, depth.ravel(), size) / pixels
    width = rgb.shape[1]
    objects = [VisibleObject(taxonomy.name(class_id), count, colour_name(colours[instance_id]),
                             (x0 + x1) / 2 / width, float(depths[instance_id]), materials.get(instance_id))
               for class_id, instance_id, x0, y0, x1, y1, count in boxes]
    return sorted(objects, key=lambda o: -o.pixels)


def _phrase(name: str, count: int, rng: np.random.Generator, describe: VisibleObject | None) -> str:
    if count > 1:
        return f"{NUMBERS.get(count, 'several')} {plural(name)}"
    adjectives = []
    if describe is not None:
        if rng.random() < 0.6:
            adjectives.append(describe.colour)
        word = material_word(describe.material)
        if word and rng.random() < 0.5:
            adjectives.append(word)
    article = "an" if (adjectives[0] if adjectives else name)[0] in "aeiou" else "a"
    return " ".join([article, *adjectives, name])


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def make_caption(objects: list[VisibleObject], room: str | None, rng: np.random.Generator,
                 max_objects: int = 5) -> str:
    """Two to four sentences about `objects` (visible things, largest first) in `room`."""
    if not objects:
        place = rng.choice(ROOM_PHRASES).format(room=room) if room else "a room"
        return f"An empty view of {place}, mostly walls and floor."
    counts = Counter(o.name for o in objects)
    names = list(dict.fromkeys(o.name for o in objects))[:max_objects]
    first = {o.name: o for o in objects}
    ordered = list(names)
    if rng.random() < 0.5:  # vary the order beyond "largest first"
        rng.shuffle(ordered)
    listed = _join([_phrase(n, counts[n], rng, first[n] if counts[n] == 1 else None) for n in ordered])
    if room:
        place = str(rng.choice(ROOM_PHRASES)).format(room=room)
        sentence = str(rng.choice(OPENINGS)).format(room=place, Room=place[0].upper() + place[1:], objects=listed)
    else:
        sentence = str(rng.choice(OPENINGS_NO_ROOM)).format(objects=listed)
    sentences = [sentence]
    singles = [o for o in objects if counts[o.name] == 1]
    if singles:  # where the largest one-of-a-kind object is
        main = singles[0]
        side = "left" if main.centre_x < 0.38 else "right" if main.centre_x > 0.62 else "centre"
        where = str(rng.choice(POSITIONS[side]))
        sentences.append(f"The {main.name} is {where}." if rng.random() < 0.5
                         else f"{where.capitalize()} is the {main.name}.")
    if len(singles) >= 2:
        a, b = sorted(singles[:2], key=lambda o: o.centre_x)
        if b.centre_x - a.centre_x > 0.15:
            sentences.append(str(rng.choice(RELATIONS)).format(a=a.name, b=b.name))
        else:
            near, far = sorted((a, b), key=lambda o: o.depth)
            if far.depth - near.depth > 0.8:
                sentences.append(f"The {near.name} is {rng.choice(DEPTHS['near'])}, "
                                 f"the {far.name} {rng.choice(DEPTHS['far'])}.")
    return " ".join(sentences)
