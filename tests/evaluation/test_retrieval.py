import numpy as np
import pytest

from keras_cvx.evaluation.retrieval import recall_at_k


def _loop_recall(embeddings, labels, k):
    hits = 0
    for i, query in enumerate(embeddings):
        scores = []
        for j, item in enumerate(embeddings):
            if j != i:
                cosine = query @ item / (np.linalg.norm(query) * np.linalg.norm(item))
                scores.append((-cosine, j))
        neighbours = [j for _, j in sorted(scores)[:k]]
        hits += any(labels[j] == labels[i] for j in neighbours)
    return hits / len(labels)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_matches_a_loop_reference(k):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(40, 6))
    labels = rng.integers(0, 4, 40)
    assert recall_at_k(embeddings, labels, k) == pytest.approx(_loop_recall(embeddings, labels, k))


def test_hand_computed_and_self_excluded():
    # Two tight clusters with swapped labels on one point: queries 0, 1 find each other (hit),
    # query 2 (label 1, in cluster A) finds 0 or 1 (miss); 3 and 4 find each other (hit).
    embeddings = np.array([[1.0, 0.0], [0.99, 0.1], [0.98, -0.1], [0.0, 1.0], [0.1, 0.99]])
    labels = np.array([0, 0, 1, 1, 1])
    assert recall_at_k(embeddings, labels, 1) == pytest.approx(4 / 5)
    assert recall_at_k(embeddings * 7.0, labels, 1) == pytest.approx(4 / 5)  # cosine: scale-free
    # A lone label can never be retrieved, even though its own embedding is the closest.
    assert recall_at_k(np.eye(3), np.array([0, 1, 2]), 1) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="k"):
        recall_at_k(np.eye(3), np.arange(3), k=3)
    with pytest.raises(ValueError, match="labels"):
        recall_at_k(np.eye(3), np.arange(4))
