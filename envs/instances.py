"""Object instances of a scene made of many parts: an exported piece of furniture is often several nodes
(a sofa's frame and cushions, a cabinet's body and doors), and each should count once in boxes and
captions."""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def connected_instances(bounds: np.ndarray, classes: np.ndarray, gap: float) -> np.ndarray:
    """One instance id per part: parts of the same class whose axis-aligned boxes come within `gap` of
    each other (touch, overlap, or nearly) are one object, transitively.

    bounds: (N, 2, 3) float, each part's box corners (min, max) in metres. classes: (N,) int, 0 =
    unlabeled (those get instance 0). Returns (N,) int64 instance ids 1..K, numbered in part order.
    """
    count = len(classes)
    rows, cols = [], []
    for class_id in np.unique(classes[classes > 0]):
        members = np.flatnonzero(classes == class_id)
        low, high = bounds[members, 0] - gap / 2, bounds[members, 1] + gap / 2  # (M, 3) each
        near = np.all((low[:, None] <= high[None]) & (low[None] <= high[:, None]), axis=-1)  # (M, M)
        a, b = np.nonzero(near)
        rows.append(members[a])
        cols.append(members[b])
    edges = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(edges)), (edges, np.concatenate(cols) if cols else edges)), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    # Number the components of labelled parts 1..K in the order their first part appears.
    ids = np.zeros(count, np.int64)
    numbering: dict[int, int] = {}
    for index in np.flatnonzero(classes > 0):
        ids[index] = numbering.setdefault(int(component[index]), len(numbering) + 1)
    return ids
