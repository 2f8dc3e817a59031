"""Retrieval metrics for embeddings (metric learning, e.g. Circle Loss, arXiv 2002.10857,
which reports Recall@K on CUB-200-2011, Cars196 and Stanford Online Products).

Recall@K (the image-retrieval convention of Song et al., arXiv 1511.06452): every embedding is
a query against all the others (itself excluded); the query scores 1 if at least one of its K
nearest neighbours by cosine similarity has its label. Ties are broken by the lower index.
Computed in NumPy (float64) on the whole ``[N, N]`` similarity matrix, so N up to a few
thousand.
"""

import numpy as np


def recall_at_k(embeddings, labels, k=1):
    """Fraction of queries with a same-label item among their ``k`` nearest (cosine) neighbours.

    Args:
        embeddings: ``[N, D]`` array (need not be normalised; zero rows have similarity 0).
        labels: ``[N]`` integer labels.
        k: number of neighbours (``1 <= k < N``).
    """
    embeddings = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels)
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"`embeddings` must be [N, D] and `labels` [N], got {embeddings.shape} and {labels.shape}.")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < len(labels):
        raise ValueError(f"`k` must be an integer in [1, N - 1 = {len(labels) - 1}], got {k!r}.")
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.maximum(norms, 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    hits = np.any(labels[neighbours] == labels[:, None], axis=1)
    return float(np.mean(hits))
