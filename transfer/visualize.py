"""Pictures of transfer predictions: boxes drawn on frames, captions printed under them."""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from tst.taxonomy import Taxonomy
from tst.visualize import class_palette


def draw_boxes(image: np.ndarray, boxes: torch.Tensor, classes: torch.Tensor, taxonomy: Taxonomy,
               scores: torch.Tensor | None = None) -> np.ndarray:
    """(H, W, 3) uint8 with each box (x0, y0, x1, y1 pixels) outlined in its class colour and labelled
    with the class name (and score)."""
    canvas = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(canvas)
    palette = class_palette(taxonomy.names)
    font = ImageFont.load_default()
    for k in range(len(boxes)):
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        class_id = int(classes[k])
        colour = tuple(int(c) for c in palette[class_id % len(palette)])
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=1)
        label = taxonomy.name(class_id) + (f" {float(scores[k]):.2f}" if scores is not None else "")
        draw.text((x0 + 1, y0), label, fill=colour, font=font)
    return np.asarray(canvas)


def caption_panel(caption: str, width: int, height: int) -> np.ndarray:
    """A white (height, width, 3) uint8 panel with `caption` word-wrapped to the width; what does not fit
    in the height is cut at a line's end and marked with "..."."""
    panel = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(panel)
    characters = max(8, width // 6)  # the default bitmap font is about 6 px per character
    lines, fits = textwrap.wrap(caption, characters), max(1, (height - 2) // 11)
    if len(lines) > fits:
        lines = lines[:fits - 1] + [textwrap.shorten(" ".join(lines[fits - 1:]), characters, placeholder=" ...")]
    for row, line in enumerate(lines):
        draw.text((2, 2 + 11 * row), line, fill="black", font=ImageFont.load_default())
    return np.asarray(panel)
