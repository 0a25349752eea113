"""Connected components of the near-duplicate graph, by a vectorised union-find.

Each round hooks the root of the larger-numbered tree of every edge that still joins two
trees onto the smaller root, then compresses every path so each node points at its root.
A node's parent is never larger than the node, so every root is the smallest node of its
tree, and when no edge joins two trees the trees are the components, each rooted at its
smallest node: for document keys, the first document of the cluster in corpus order. The
rounds are numpy passes over the edge list (a few for real graphs, logarithmic for chains),
so millions of edges take seconds, where a Python loop over edges would take minutes.
"""

from __future__ import annotations

import numpy as np


def components(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the graph with edges (u[i], v[i]): its nodes (sorted) and, for each, the smallest node of its component."""
    nodes, inverse = np.unique(np.concatenate([u, v]), return_inverse=True)
    iu, iv = inverse[: len(u)], inverse[len(u) :]
    parent = np.arange(len(nodes))
    while True:
        ru, rv = parent[iu], parent[iv]
        joins = ru != rv
        if not joins.any():
            return nodes, nodes[parent]
        ru, rv = ru[joins], rv[joins]
        np.minimum.at(parent, np.maximum(ru, rv), np.minimum(ru, rv))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
