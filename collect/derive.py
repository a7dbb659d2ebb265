"""Boxes derived from a rendered frame's labels (modalities derived from pixels, such as edges, say how
in their registry entry: `tst.modalities`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tst.taxonomy import Taxonomy


def instance_boxes(semantic: np.ndarray, instance: np.ndarray, taxonomy: Taxonomy,
                   min_pixels: int) -> list[tuple[int, int, int, int, int, int, int]]:
    """One box per visible thing instance: (class_id, instance_id, x0, y0, x1, y1, visible_pixels).

    Coordinates are pixels, x1/y1 exclusive (the box is mask[y0:y1, x0:x1]); the class is the one most
    of the instance's pixels carry. Stuff classes (wall, floor, ...) and instances with fewer than
    `min_pixels` visible pixels get no box. Sorted by instance id.
    """
    ids = instance.astype(np.int64).ravel()
    counts = np.bincount(ids)
    if len(counts) <= 1:
        return []
    slices = ndimage.find_objects(instance.astype(np.int64))  # slices[i - 1] bounds instance id i
    # Majority class per instance: count (instance, class) pairs.
    pair = ids * len(taxonomy) + semantic.astype(np.int64).ravel()
    pair_counts = np.bincount(pair, minlength=len(counts) * len(taxonomy)).reshape(len(counts), len(taxonomy))
    majority = pair_counts.argmax(axis=1)
    things = np.zeros(len(taxonomy), bool)
    things[taxonomy.thing_ids] = True
    boxes = []
    for instance_id in np.nonzero(counts >= max(1, min_pixels))[0]:
        class_id = int(majority[instance_id])
        if instance_id == 0 or not things[class_id]:
            continue
        rows, cols = slices[instance_id - 1]
        boxes.append((class_id, int(instance_id), int(cols.start), int(rows.start), int(cols.stop), int(rows.stop),
                      int(counts[instance_id])))
    return boxes
