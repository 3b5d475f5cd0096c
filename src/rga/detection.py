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

Sizes are checked against the number of rows N before any work (:func:`check_cube_sizes`):
CUBE needs N >= 3 and ``n_components`` < N, HDBSCAN's ``min_cluster_size`` and ``min_samples``
(after resolving fractions) at most N; these raise :class:`CubeSizeError`. Two sound fallbacks
are logged warnings instead (and listed in the result's warnings): ``n_neighbors`` above N - 1
is lowered to N - 1, and below ``n_components + 2`` rows UMAP's spectral initialisation
(an eigenproblem of size N) is impossible, so its random initialisation is used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

RULES = ("label_relative", "largest", "per_label")
DETECTORS = ("cube", "oracle", "noisy_oracle")
MIN_CUBE_ROWS = 3  # UMAP needs at least 2 neighbours per row

log = logging.getLogger(__name__)


class CubeSizeError(ValueError):
    """A CUBE setting does not fit the number of training rows."""


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


@dataclass
class CubeSizes:
    """CUBE sizes checked against the rows: what UMAP and HDBSCAN will be run with."""

    n_neighbors: int
    init: str  # UMAP initialisation: "spectral" (UMAP's default) or "random"
    min_cluster_size: int
    min_samples: int
    notes: list[str] = field(default_factory=list)  # the fallbacks taken (also logged as warnings)


def check_cube_sizes(n_rows: int, n_components: int, n_neighbors: int, min_cluster_size: float,
                     min_samples: float) -> CubeSizes:
    """Check CUBE's size settings against ``n_rows`` before running anything.

    Args:
        n_rows: training rows N.
        n_components, n_neighbors: UMAP settings (``detect.n_components``, ``detect.n_neighbors``).
        min_cluster_size, min_samples: HDBSCAN sizes, counts (>= 1) or fractions of N (< 1).

    Returns:
        :class:`CubeSizes`; ``n_neighbors`` lowered to N - 1 when larger, ``init="random"``
        when N < n_components + 2 (spectral initialisation needs n_components + 1 eigenvectors
        of an N x N graph); each fallback is logged as a warning and listed in ``notes``.

    Raises:
        CubeSizeError: N < 3, ``n_components`` < 1 or >= N, ``n_neighbors`` < 2, or an HDBSCAN
            size above N; the message says what is too small and which setting to change.
    """
    if n_rows < MIN_CUBE_ROWS:
        raise CubeSizeError(f"CUBE needs at least {MIN_CUBE_ROWS} training rows, got {n_rows}; use more "
                            "training rows (data.max_train) or detect.detector: oracle")
    if not 1 <= n_components < n_rows:
        raise CubeSizeError(f"detect.n_components {n_components} must be between 1 and the number of training "
                            f"rows minus one ({n_rows - 1}); lower detect.n_components or use more training rows")
    if n_neighbors < 2:
        raise CubeSizeError(f"detect.n_neighbors must be >= 2, got {n_neighbors}")
    notes = []
    if n_neighbors > n_rows - 1:
        notes.append(f"detect.n_neighbors {n_neighbors} is more than the {n_rows - 1} other training rows; "
                     f"UMAP uses {n_rows - 1} (lower detect.n_neighbors or use more rows)")
        n_neighbors = n_rows - 1
    init = "spectral"
    if n_rows < n_components + 2:
        notes.append(f"{n_rows} training rows are too few for UMAP's spectral initialisation with "
                     f"detect.n_components {n_components} (needs {n_components + 2}); using random initialisation")
        init = "random"
    mcs = resolve_size(min_cluster_size, n_rows, "detect.min_cluster_size")
    ms = resolve_size(min_samples, n_rows, "detect.min_samples")
    for what, value, size in (("min_cluster_size", min_cluster_size, mcs), ("min_samples", min_samples, ms)):
        if size > n_rows:
            raise CubeSizeError(
                f"detect.{what} {value} resolves to {size} rows but there are only {n_rows} training rows, so "
                f"HDBSCAN can find no cluster; lower detect.{what} (a value below 1 is a fraction of the rows, "
                "e.g. 0.05)")
    for note in notes:
        log.warning("CUBE: %s", note)
    return CubeSizes(int(n_neighbors), init, mcs, ms, notes)


def reduce_umap(x: np.ndarray, n_components: int = 4, n_neighbors: int = 100, min_dist: float = 0.25,
                metric: str = "cosine", seed: int = 0, init: str = "spectral") -> np.ndarray:
    """UMAP embedding [N, n_components] of representations ``x`` [N, H] (seeded, deterministic).

    ``n_neighbors`` is capped at N - 1; ``init`` is UMAP's initialisation (``spectral`` needs
    N >= n_components + 2, see :func:`check_cube_sizes`).
    """
    import umap

    n_neighbors = int(min(n_neighbors, max(2, len(x) - 1)))
    reducer = umap.UMAP(n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist,
                        metric=metric, random_state=seed, n_jobs=1, init=init)
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
    module docstring) is applied after the rule. Sizes are checked first
    (:func:`check_cube_sizes`); its fallbacks come first in the result's warnings.

    Raises:
        ValueError: unknown rule (lists the valid ones).
        CubeSizeError: a size that does not fit N (see :func:`check_cube_sizes`).
    """
    if rule not in RULES:  # fail before the expensive UMAP step
        raise ValueError(f"unknown filter rule {rule!r}; valid choices: {', '.join(RULES)}")
    sizes = check_cube_sizes(len(representations), n_components, n_neighbors, min_cluster_size, min_samples)
    z = reduce_umap(representations, n_components, sizes.n_neighbors, min_dist, metric, seed, sizes.init)
    clusters = cluster_hdbscan(z, sizes.min_cluster_size, sizes.min_samples)
    flagged = filter_clusters(clusters, labels, num_labels, rule, keep_ratio)
    if predictions is not None:
        flagged = apply_fit_filter(flagged, predictions, labels)
    return DetectionResult(flagged, clusters, z,
                           sizes.notes + degenerate_warnings(clusters, flagged, num_labels))


def noisy_oracle(is_poisoned: np.ndarray, precision: float, recall: float, seed: int = 0) -> np.ndarray:
    """A forget set with a chosen precision and recall, drawn from the ground truth (paper App. B.2:
    unlearning under imperfect detection).

    Of the T true poisoned rows, ``round(recall·T)`` are drawn (TP); clean rows are added, drawn
    uniformly among all clean rows, until TP / flagged equals ``precision``:
    FP = ``round(TP·(1 − precision)/precision)``. Both draws use ``numpy.random.default_rng([seed,
    404])``, so the same seed gives the same forget set.

    Args:
        is_poisoned: [N] bool ground truth.
        precision, recall: targets in (0, 1].
        seed: the cell seed.

    Returns:
        [N] bool flags; precision and recall hit the targets up to the rounding of counts.

    Raises:
        ValueError: precision or recall outside (0, 1] (names the key ``detect.precision`` /
            ``detect.recall``), no poisoned row, or too few clean rows for the false positives.
    """
    for what, v in (("precision", precision), ("recall", recall)):
        if not 0 < v <= 1:
            raise ValueError(f"detect.{what} must be in (0, 1] for detect.detector noisy_oracle, got {v}")
    truth = np.asarray(is_poisoned, bool)
    pos, neg = np.flatnonzero(truth), np.flatnonzero(~truth)
    if len(pos) == 0:
        raise ValueError("detect.detector noisy_oracle needs poisoned rows, but the training set has none")
    tp = max(1, int(round(recall * len(pos))))
    fp = int(round(tp * (1 - precision) / precision))
    if fp > len(neg):
        raise ValueError(f"detect.precision {precision} needs {fp} clean false positives but there are only "
                         f"{len(neg)} clean rows; raise detect.precision")
    rng = np.random.default_rng([seed, 404])
    flagged = np.zeros(len(truth), dtype=bool)
    flagged[rng.choice(pos, size=tp, replace=False)] = True
    flagged[rng.choice(neg, size=fp, replace=False)] = True
    return flagged


def detection_scores(flagged: np.ndarray, is_poisoned: np.ndarray | None) -> dict:
    """Precision, recall, F1 (0-1) of ``flagged`` [N] against the ground truth [N].

    An empty flag set has precision 0 (and F1 0) unless there is no poison at all.
    ``is_poisoned=None`` means the ground truth is unknown (a user dataset with only
    ``suspect`` marks or none, attack ``given``): precision, recall, F1, ``true_poisoned`` and
    ``true_positives`` are then ``None`` and ``ground_truth`` is ``"unknown"``, never a made-up number.
    """
    if is_poisoned is None:
        return {"precision": None, "recall": None, "f1": None, "flagged": int(np.asarray(flagged, bool).sum()),
                "true_poisoned": None, "true_positives": None, "ground_truth": "unknown"}
    f, t = np.asarray(flagged, bool), np.asarray(is_poisoned, bool)
    tp = int((f & t).sum())
    precision = tp / f.sum() if f.sum() else float(not t.any())
    recall = tp / t.sum() if t.sum() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "flagged": int(f.sum()), "true_poisoned": int(t.sum()), "true_positives": tp}


def degenerate_reason(n_forget: int, n_retain: int, cell: str) -> str | None:
    """Why a cell's detected split leaves nothing to unlearn with, or None when it does not.

    A forget set of 0 rows (the detector flagged nothing) or a retain set of 0 rows (it flagged
    every row) is a *degenerate* cell: an outcome of detection, recorded as a result, not an
    error. The unlearning stages of such a cell write ``status: skipped`` with this reason and
    null metrics (:func:`rga.stagekit.write_skipped_result`); the report leaves them out of
    every mean, interval and verdict.

    Args:
        n_forget, n_retain: rows in the detected forget and retain sets.
        cell: the cell's name, for the message.

    Returns:
        The reason (names the cell and what to change), or None when both sets have rows.
    """
    if n_forget == 0:
        return (f"cell {cell}: the detected forget set is empty (detection flagged 0 of {n_retain} training rows), "
                "nothing to unlearn; to unlearn anyway set 'detect.detector: oracle' (the true poisoned rows) or "
                "change detect.min_cluster_size / detect.min_samples / detect.rule")
    if n_retain == 0:
        return (f"cell {cell}: detection flagged every one of the {n_forget} training rows, so the retain set is "
                "empty; set 'detect.detector: oracle' or change detect.min_cluster_size / detect.min_samples / "
                "detect.rule")
    return None
