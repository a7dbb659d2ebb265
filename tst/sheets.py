"""Contact sheets: frames as rows, modalities as columns, with a legend of the classes in view."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tst.frame import Frame
from tst.modalities import get
from tst.taxonomy import Taxonomy
from tst.visualize import class_palette, label_image

PAD = 4
HEADER = 18
SWATCH = 12


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def contact_sheet(frames: list[Frame], modalities: list[str], taxonomy: Taxonomy | None = None) -> Image.Image:
    """One row per frame, one column per modality (visualized through the registry), column titles
    on top, and (with a taxonomy and a semantic column) a legend of every class visible in any frame."""
    if not frames:
        raise ValueError("contact_sheet: no frames")
    height, width = frames[0].camera.height, frames[0].camera.width
    grid_w = len(modalities) * (width + PAD) + PAD
    grid_h = HEADER + len(frames) * (height + PAD) + PAD
    visible: list[int] = []
    if taxonomy is not None and "semantic" in modalities:
        ids = np.unique(np.concatenate([np.unique(f["semantic"]) for f in frames]))
        visible = [int(i) for i in ids if i > 0]
    legend_rows = (len(visible) + 3) // 4
    sheet = Image.new("RGB", (grid_w, grid_h + legend_rows * (SWATCH + 4) + (PAD if visible else 0)), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font()
    palette = class_palette(taxonomy.names) if taxonomy is not None else None
    for column, name in enumerate(modalities):
        draw.text((PAD + column * (width + PAD) + 2, 3), name, fill="black", font=font)
        for row, frame in enumerate(frames):
            if name == "semantic" and palette is not None:  # coloured by class name, as in every sheet
                image = label_image(frame[name], palette=palette)
            else:
                image = get(name).picture(frame[name], None)
            sheet.paste(Image.fromarray(image), (PAD + column * (width + PAD), HEADER + row * (height + PAD)))
    if visible:
        column_w = grid_w // 4
        for k, class_id in enumerate(visible):
            x = PAD + (k % 4) * column_w
            y = grid_h + (k // 4) * (SWATCH + 4)
            draw.rectangle([x, y, x + SWATCH, y + SWATCH], fill=tuple(int(c) for c in palette[class_id]))
            draw.text((x + SWATCH + 4, y), taxonomy.name(class_id), fill="black", font=font)
    return sheet


def grid_image(rows: list[list[np.ndarray]], column_titles: list[str], row_titles: list[str]) -> Image.Image:
    """A table of (H, W_c, 3) uint8 images, one height, column c's images W_c wide (a text panel may be
    wider than a frame), with column titles on top and row titles left."""
    height = rows[0][0].shape[0]
    widths = [max(images[column].shape[1] for images in rows) for column in range(len(column_titles))]
    lefts = list(np.cumsum([70 + PAD] + [w + PAD for w in widths[:-1]]))  # 70 px of row titles first
    sheet = Image.new("RGB", (int(lefts[-1]) + widths[-1] + PAD, HEADER + len(rows) * (height + PAD) + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font()
    for left, title in zip(lefts, column_titles):
        draw.text((int(left), 3), title, fill="black", font=font)
    for row, (title, images) in enumerate(zip(row_titles, rows)):
        y = HEADER + row * (height + PAD)
        draw.text((3, y + height // 2 - 5), title, fill="black", font=font)
        for left, image in zip(lefts, images):
            sheet.paste(Image.fromarray(image), (int(left), y))
    return sheet
