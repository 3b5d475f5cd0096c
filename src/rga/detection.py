"""CUBE poisoned-sample detection (Cui et al., 2022; paper §6.1 and App. B.2).

1. Representation: the poisoned model's last-layer hidden state of [CLS] (encoders) or of the
   last real token (decoders) for every training row.
2. Clustering: UMAP to 4 dimensions (n_neighbors 100, min_dist 0.25 / 0.15 DistilBERT, cosine,
   seeded), then HDBSCAN (min_cluster_size 150, min_samples 120).
3. Filtering: poisoned rows are assumed to be the minority. Three rules:
   - ``largest`` (CUBE as in the paper): keep the ``num_labels`` largest clusters, flag the rest
     (noise included).
   - ``per_label``: within each training label keep its largest cluster and drop clusters
     holding fewer than half of that label's rows.
   - ``label_relative`` (default, more robust): within each training label, keep the rows of its
     largest cluster and of every cluster whose count of that label's rows is at least
     ``keep_ratio`` times the largest one's; flag the rest (noise included). Judging clusters by
     their size relative to their label's main cluster, not by global rank, survives the two
     failure modes seen with the rank rule: clean rows of both labels merged into one cluster
     (the rank rule then keeps the poison cluster as "second largest"), and one label's clean
     rows split so that the poison cluster enters the top ``num_labels``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RULES = ("label_relative", "largest", "per_label")
DETECTORS = ("cube", "oracle")


class EmptyForgetSetError(RuntimeError):
    """Unlearning was asked to run on an empty forget set."""


@dataclass
class DetectionResult:
    """Flags [N] bool, cluster labels [N] int (-1 noise), embedding [N, d] and warnings."""

    flagged: np.ndarray
    clusters: np.ndarray
    embedding: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)


def resolve_size(value: float | int, n_rows: int, what: str) -> int:
    """An HDBSCAN size given as an absolute count (>= 1) or a fraction of the rows (< 1).

    Raises:
        ValueError: non-positive value (names ``what``).
    """
    if value <= 0:
        raise ValueError(f"{what} must be > 0 (a count, or a fraction of the rows below 1), got {value}")
    size = int(round(value * n_rows)) if value < 1 else int(value)
    return max(2, size)


def reduce_umap(x: np.ndarray, n_components: int = 4, n_neighbors: int = 100, min_dist: float = 0.25,
                metric: str = "cosine", seed: int = 0) -> np.ndarray:
    """UMAP embedding [N, n_components] of representations ``x`` [N, H] (seeded, deterministic)."""
    import umap

    n_neighbors = int(min(n_neighbors, max(2, len(x) - 1)))
    reducer = umap.UMAP(n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist,
                        metric=metric, random_state=seed, n_jobs=1)
    return reducer.fit_transform(np.asarray(x, dtype=np.float32)).astype(np.float32)


def cluster_hdbscan(z: np.ndarray, min_cluster_size: int, min_samples: int) -> np.ndarray:
    """HDBSCAN cluster labels [N] (-1 = noise) of an embedding ``z`` [N, d]."""
    from sklearn.cluster import HDBSCAN

    min_samples = min(min_samples, len(z) - 1)
    return HDBSCAN(min_cluster_size=min_cluster_size, min_samples=max(1, min_samples), copy=True).fit_predict(z)


def filter_clusters(clusters: np.ndarray, labels: np.ndarray, num_labels: int,
                    rule: str = "label_relative", keep_ratio: float = 0.5) -> np.ndarray:
    """CUBE step 3: which rows to flag as poisoned, from cluster ids and training labels.

    Args:
        clusters: [N] HDBSCAN labels, -1 = noise.
        labels: [N] training labels (as in the poisoned training set).
        num_labels: number of classes.
        rule: one of :data:`RULES` (see the module docstring).
        keep_ratio: for ``label_relative``, clusters with at least this share of the label's
            main-cluster count are kept too.

    Returns:
        [N] bool, True = flagged as poisoned (goes to the forget set). Noise is flagged.

    Raises:
        ValueError: unknown rule (lists the valid ones).
    """
    if rule not in RULES:
        raise ValueError(f"unknown filter rule {rule!r}; valid choices: {', '.join(RULES)}")
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    flagged = np.ones(len(clusters), dtype=bool)
    real = clusters >= 0
    if rule == "largest":
        ids, sizes = np.unique(clusters[real], return_counts=True)
        keep = ids[np.argsort(-sizes, kind="stable")[:num_labels]]
        flagged[np.isin(clusters, keep)] = False
        return flagged
    for lab in np.unique(labels):
        rows = (labels == lab) & real
        if not rows.any():
            continue
        ids, sizes = np.unique(clusters[rows], return_counts=True)
        if rule == "per_label":
            n_label = int((labels == lab).sum())
            keep = [ids[np.argmax(sizes)]] + [i for i, s in zip(ids, sizes) if s >= 0.5 * n_label]
        else:
            keep = [i for i, s in zip(ids, sizes) if s >= keep_ratio * sizes.max()]
        flagged[rows & np.isin(clusters, keep)] = False
    return flagged


def apply_fit_filter(flagged: np.ndarray, predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Keep flagged only rows the poisoned model predicts as their training label.

    Args:
        flagged: [N] bool from :func:`filter_clusters`.
        predictions: [N] int, the poisoned model's predicted labels on the training rows.
        labels: [N] int, the training labels.

    Returns:
        [N] bool, ``flagged & (predictions == labels)``.
    """
    return np.asarray(flagged, bool) & (np.asarray(predictions) == np.asarray(labels))


def degenerate_warnings(clusters: np.ndarray, flagged: np.ndarray, num_labels: int) -> list[str]:
    """Warnings for the failure modes: fewer clusters than classes, nothing flagged, or more
    than half of the rows flagged."""
    out = []
    n_clusters = len(set(np.unique(clusters)) - {-1})
    if n_clusters < num_labels:
        out.append(f"HDBSCAN found {n_clusters} cluster(s) for {num_labels} classes")
    if flagged.sum() == 0:
        out.append("no row flagged as poisoned: the forget set is empty")
    elif flagged.mean() > 0.5:
        out.append(f"{int(flagged.sum())} of {len(flagged)} rows flagged (more than half): "
                   "the minority assumption is violated")
    return out


def cube_detect(representations: np.ndarray, labels: np.ndarray, num_labels: int, *, seed: int = 0,
                n_components: int = 4, n_neighbors: int = 100, min_dist: float = 0.25,
                metric: str = "cosine", min_cluster_size: float = 150, min_samples: float = 120,
                rule: str = "label_relative", keep_ratio: float = 0.5,
                predictions: np.ndarray | None = None) -> DetectionResult:
    """Run CUBE steps 2-3 on representations [N, H] with training labels [N].

    HDBSCAN sizes below 1 are fractions of N (for subsampled runs). UMAP runs once. With
    ``predictions`` ([N] labels predicted by the poisoned model) the fit filter (step 4 of the
    module docstring) is applied after the rule.
    """
    if rule not in RULES:  # fail before the expensive UMAP step
        raise ValueError(f"unknown filter rule {rule!r}; valid choices: {', '.join(RULES)}")
    n = len(representations)
    z = reduce_umap(representations, n_components, n_neighbors, min_dist, metric, seed)
    mcs = resolve_size(min_cluster_size, n, "min_cluster_size")
    ms = resolve_size(min_samples, n, "min_samples")
    clusters = cluster_hdbscan(z, mcs, ms)
    flagged = filter_clusters(clusters, labels, num_labels, rule, keep_ratio)
    if predictions is not None:
        flagged = apply_fit_filter(flagged, predictions, labels)
    return DetectionResult(flagged, clusters, z, degenerate_warnings(clusters, flagged, num_labels))


def detection_scores(flagged: np.ndarray, is_poisoned: np.ndarray) -> dict:
    """Precision, recall, F1 (0-1) of ``flagged`` [N] against the ground truth [N].

    An empty flag set has precision 0 (and F1 0) unless there is no poison at all.
    """
    f, t = np.asarray(flagged, bool), np.asarray(is_poisoned, bool)
    tp = int((f & t).sum())
    precision = tp / f.sum() if f.sum() else float(not t.any())
    recall = tp / t.sum() if t.sum() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "flagged": int(f.sum()), "true_poisoned": int(t.sum()), "true_positives": tp}


def require_retain_set(n_retain: int, cell: str) -> None:
    """Refuse to unlearn when detection flagged every row (nothing left to retain).

    Raises:
        EmptyForgetSetError: names the cell and suggests ``detector: oracle`` or other sizes.
    """
    if n_retain == 0:
        raise EmptyForgetSetError(
            f"cell {cell}: detection flagged every training row, so the retain set is empty. Set "
            "'detect.detector: oracle', or change detect.min_cluster_size / detect.min_samples / "
            "detect.rule and re-run detection.")


def require_forget_set(n_forget: int, cell: str) -> None:
    """Refuse to unlearn with an empty forget set.

    Raises:
        EmptyForgetSetError: names the cell and suggests ``detector: oracle`` or other sizes.
    """
    if n_forget == 0:
        raise EmptyForgetSetError(
            f"cell {cell}: the detected forget set is empty, nothing to unlearn. Set "
            "'detect.detector: oracle' to use the true poisoned rows, or change "
            "detect.min_cluster_size / detect.min_samples / detect.rule and re-run detection.")
