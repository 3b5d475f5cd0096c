"""CUBE detection: clustering on synthetic embeddings, the filtering rules, degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest

from rga.detection import (
    RULES,
    DetectionResult,
    cube_detect,
    degenerate_reason,
    degenerate_warnings,
    detection_scores,
    filter_clusters,
    resolve_size,
)

N_CLEAN, N_POISON, DIM, TARGET = 300, 40, 16, 1


def planted_embeddings(seed: int = 0):
    """Two big Gaussian blobs (label 0 / label 1) and a small planted blob labelled TARGET.

    The three centres point in orthogonal directions (well separated in cosine distance too).
    Returns ``(x [N, 16], labels [N], is_poisoned [N])`` with the rows shuffled.
    """
    rng = np.random.default_rng(seed)
    centres = np.zeros((3, DIM))
    centres[0, 0] = centres[1, 1] = centres[2, 2] = 10.0
    x = np.concatenate([
        centres[0] + rng.normal(0, 0.7, (N_CLEAN, DIM)),
        centres[1] + rng.normal(0, 0.7, (N_CLEAN, DIM)),
        centres[2] + rng.normal(0, 0.7, (N_POISON, DIM)),
    ]).astype(np.float32)
    labels = np.array([0] * N_CLEAN + [1] * N_CLEAN + [TARGET] * N_POISON)
    poisoned = np.array([False] * (2 * N_CLEAN) + [True] * N_POISON)
    order = rng.permutation(len(x))
    return x[order], labels[order], poisoned[order]


CUBE_KW = dict(n_components=4, n_neighbors=30, min_dist=0.25, metric="cosine",
               min_cluster_size=20, min_samples=10)


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """UMAP (numba's OpenMP layer) resets the shared OpenMP thread count to all cores, which
    raises torch's intra-op threads too and makes later torch tests in this process crawl on a
    busy machine; put it back after this module."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def planted():
    return planted_embeddings(seed=0)


@pytest.fixture(scope="module")
def first_run(planted):
    x, labels, _ = planted
    return cube_detect(x, labels, 2, seed=0, rule="label_relative", **CUBE_KW)


# ----------------------------------------------------------------------------- cube_detect


def test_cube_detect_flags_exactly_the_planted_cluster_label_relative(planted, first_run):
    x, labels, poisoned = planted
    res = first_run
    assert isinstance(res, DetectionResult)
    assert res.flagged.shape == (len(x),) and res.flagged.dtype == bool
    assert res.clusters.shape == (len(x),)
    assert res.embedding.shape == (len(x), 4)
    # three clusters: the two clean blobs and the planted one, no noise
    assert len(set(res.clusters.tolist()) - {-1}) == 3
    # the planted rows form exactly one cluster and nothing else is in it
    poison_ids = set(res.clusters[poisoned].tolist())
    assert len(poison_ids) == 1 and -1 not in poison_ids
    assert np.array_equal(res.clusters == poison_ids.pop(), poisoned)
    scores = detection_scores(res.flagged, poisoned)
    assert scores["f1"] == 1.0
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0
    assert scores["flagged"] == N_POISON and scores["true_positives"] == N_POISON
    assert np.array_equal(res.flagged, poisoned)
    assert res.warnings == []


@pytest.mark.parametrize("rule", ["per_label", "largest"])
def test_cube_detect_flags_exactly_the_planted_cluster_other_rules(planted, first_run, rule):
    x, labels, poisoned = planted
    res = cube_detect(x, labels, 2, seed=0, rule=rule, **CUBE_KW)
    # UMAP/HDBSCAN are seeded: same clusters as the label_relative run, only the rule differs
    assert np.array_equal(res.clusters, first_run.clusters)
    assert detection_scores(res.flagged, poisoned)["f1"] == 1.0
    assert np.array_equal(res.flagged, poisoned)


def test_cube_detect_is_deterministic_for_a_fixed_seed(planted, first_run):
    x, labels, _ = planted
    again = cube_detect(x, labels, 2, seed=0, rule="label_relative", **CUBE_KW)
    assert np.array_equal(again.flagged, first_run.flagged)
    assert np.array_equal(again.clusters, first_run.clusters)
    np.testing.assert_array_equal(again.embedding, first_run.embedding)


def test_cube_detect_fractional_sizes_resolve_against_rows(planted, first_run):
    x, labels, poisoned = planted
    n = len(x)
    # 20/640 and 10/640 as fractions give the same HDBSCAN sizes as the counts
    res = cube_detect(x, labels, 2, seed=0, rule="label_relative",
                      **{**CUBE_KW, "min_cluster_size": 20 / n, "min_samples": 10 / n})
    assert np.array_equal(res.clusters, first_run.clusters)
    assert np.array_equal(res.flagged, poisoned)


# ----------------------------------------------------------------------------- filter_clusters


def merged_clean_example():
    """Clean rows of both labels in cluster 0, the poison (label 1) in cluster 1."""
    clusters = np.array([0] * 100 + [0] * 100 + [1] * 20)
    labels = np.array([0] * 100 + [1] * 100 + [1] * 20)
    poisoned = np.array([False] * 200 + [True] * 20)
    return clusters, labels, poisoned


def test_filter_largest_keeps_poison_when_clean_labels_merge():
    clusters, labels, poisoned = merged_clean_example()
    flagged = filter_clusters(clusters, labels, num_labels=2, rule="largest")
    # the documented failure of the rank rule: the poison cluster is the "second largest"
    assert flagged.sum() == 0
    assert detection_scores(flagged, poisoned)["recall"] == 0.0


@pytest.mark.parametrize("rule", ["label_relative", "per_label"])
def test_filter_label_rules_flag_poison_when_clean_labels_merge(rule):
    clusters, labels, poisoned = merged_clean_example()
    flagged = filter_clusters(clusters, labels, num_labels=2, rule=rule)
    assert np.array_equal(flagged, poisoned)


@pytest.mark.parametrize("rule", RULES)
def test_filter_flags_noise_rows(rule):
    clusters = np.array([0] * 6 + [-1] + [1] * 6 + [-1] + [2] * 2)
    labels = np.array([0] * 7 + [1] * 9)
    flagged = filter_clusters(clusters, labels, num_labels=2, rule=rule)
    assert flagged[6] and flagged[13]
    # the two clean clusters are kept, the small label-1 cluster 2 is flagged
    expected = np.array([False] * 6 + [True] + [False] * 6 + [True, True, True])
    assert np.array_equal(flagged, expected)


def test_filter_all_noise_flags_everything():
    clusters = np.full(6, -1)
    labels = np.array([0, 0, 0, 1, 1, 1])
    for rule in RULES:
        assert filter_clusters(clusters, labels, 2, rule=rule).all()


def split_label_example():
    """Label 0's clean rows split into two equal clusters (0, 1); label 1 clean in cluster 2;
    poison (label 1) in cluster 3."""
    clusters = np.array([0] * 50 + [1] * 50 + [2] * 100 + [3] * 10)
    labels = np.array([0] * 100 + [1] * 100 + [1] * 10)
    poisoned = np.array([False] * 200 + [True] * 10)
    return clusters, labels, poisoned


def test_filter_label_relative_keeps_both_halves_of_a_split_label():
    clusters, labels, poisoned = split_label_example()
    flagged = filter_clusters(clusters, labels, num_labels=2, rule="label_relative")
    assert not flagged[:100].any()  # both halves of label 0 kept
    assert np.array_equal(flagged, poisoned)


def test_filter_per_label_keeps_both_halves_of_a_split_label():
    clusters, labels, poisoned = split_label_example()
    flagged = filter_clusters(clusters, labels, num_labels=2, rule="per_label")
    assert np.array_equal(flagged, poisoned)


def test_filter_largest_drops_one_half_of_a_split_label():
    clusters, labels, poisoned = split_label_example()
    flagged = filter_clusters(clusters, labels, num_labels=2, rule="largest")
    # the rank rule keeps cluster 2 (100) and the first 50-row cluster only
    assert flagged[200:].all()
    assert not flagged[:50].any() and flagged[50:100].all() and not flagged[100:200].any()


def test_filter_label_relative_keep_ratio():
    # label 0: clusters of 100 and 40 rows; 40 >= 0.3*100 but < 0.5*100
    clusters = np.array([0] * 100 + [1] * 40 + [2] * 80)
    labels = np.array([0] * 140 + [1] * 80)
    assert filter_clusters(clusters, labels, 2, "label_relative", keep_ratio=0.5)[100:140].all()
    assert not filter_clusters(clusters, labels, 2, "label_relative", keep_ratio=0.3).any()


def test_filter_unknown_rule_lists_choices():
    with pytest.raises(ValueError) as e:
        filter_clusters(np.array([0, 1]), np.array([0, 1]), 2, rule="biggest")
    msg = str(e.value)
    assert "biggest" in msg
    for r in RULES:
        assert r in msg


def test_cube_detect_unknown_rule_raises(planted):
    x, labels, _ = planted
    with pytest.raises(ValueError, match="label_relative"):
        cube_detect(x[:50], labels[:50], 2, rule="nope", n_neighbors=10, min_cluster_size=5, min_samples=3)


# ----------------------------------------------------------------------------- degenerate cases


def test_warning_fewer_clusters_than_classes():
    clusters = np.array([0, 0, 0, 0, -1])
    flagged = np.array([False, False, False, False, True])
    w = degenerate_warnings(clusters, flagged, num_labels=2)
    assert w == ["HDBSCAN found 1 cluster(s) for 2 classes"]


def test_warning_nothing_flagged():
    clusters = np.array([0, 0, 1, 1])
    w = degenerate_warnings(clusters, np.zeros(4, bool), num_labels=2)
    assert len(w) == 1
    assert "no row flagged" in w[0] and "forget set is empty" in w[0]


def test_warning_more_than_half_flagged():
    clusters = np.array([0, 0, 1, 1, 2, 2])
    flagged = np.array([True, True, True, True, False, False])
    w = degenerate_warnings(clusters, flagged, num_labels=2)
    assert w == ["4 of 6 rows flagged (more than half): the minority assumption is violated"]


def test_no_warning_exactly_half_flagged_and_enough_clusters():
    clusters = np.array([0, 0, 1, 1])
    assert degenerate_warnings(clusters, np.array([True, True, False, False]), num_labels=2) == []


def test_warnings_combine():
    clusters = np.full(4, -1)
    w = degenerate_warnings(clusters, np.ones(4, bool), num_labels=4)
    assert w[0] == "HDBSCAN found 0 cluster(s) for 4 classes"
    assert w[1].startswith("4 of 4 rows flagged (more than half)")
    assert len(w) == 2


def test_degenerate_reason_names_the_cell_the_count_and_what_to_change():
    assert degenerate_reason(12, 228, "minilm-sst2-badnets-0") is None
    empty_forget = degenerate_reason(0, 240, "minilm-sst2-hiddenkiller-0")
    assert empty_forget.startswith("cell minilm-sst2-hiddenkiller-0: the detected forget set is empty "
                                   "(detection flagged 0 of 240 training rows), nothing to unlearn")
    assert "'detect.detector: oracle'" in empty_forget
    empty_retain = degenerate_reason(240, 0, "minilm-sst2-badnets-0")
    assert empty_retain.startswith("cell minilm-sst2-badnets-0: detection flagged every one of the 240 training "
                                   "rows, so the retain set is empty")


# ----------------------------------------------------------------------------- sizes and scores


def test_resolve_size_fraction_and_count():
    assert resolve_size(0.05, 2000, "min_cluster_size") == 100
    assert resolve_size(0.04, 2000, "min_samples") == 80
    assert resolve_size(0.1, 245, "x") == 24  # round(24.5) -> 24 (banker's rounding)
    assert resolve_size(150, 2000, "min_cluster_size") == 150
    assert resolve_size(150.0, 10, "min_cluster_size") == 150  # a count is not scaled
    assert resolve_size(1, 100, "x") == 2  # at least 2
    assert resolve_size(0.001, 100, "x") == 2


@pytest.mark.parametrize("bad", [0, -1, -0.5, 0.0])
def test_resolve_size_rejects_non_positive(bad):
    with pytest.raises(ValueError) as e:
        resolve_size(bad, 100, "min_samples")
    assert "min_samples" in str(e.value)
    assert str(bad) in str(e.value)


def test_detection_scores_hand_example():
    flagged = np.array([1, 1, 1, 0, 0, 1, 0, 0], bool)
    truth = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    s = detection_scores(flagged, truth)
    # tp = 2, flagged = 4, poisoned = 3
    assert s["true_positives"] == 2 and s["flagged"] == 4 and s["true_poisoned"] == 3
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # = 4/7
    assert s["f1"] == pytest.approx(4 / 7)


def test_detection_scores_edge_cases():
    none = np.zeros(4, bool)
    some = np.array([1, 0, 0, 0], bool)
    # nothing flagged while poison exists: precision 0, F1 0
    s = detection_scores(none, some)
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)
    # nothing flagged and nothing poisoned: perfect
    s = detection_scores(none, none)
    assert (s["precision"], s["recall"], s["f1"]) == (1.0, 1.0, 1.0)
    # flags without any poison: precision 0, recall 1 by convention
    s = detection_scores(some, none)
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 1.0, 0.0)


def test_fit_filter_keeps_only_rows_the_model_fits():
    from rga.detection import apply_fit_filter

    flagged = np.array([True, True, True, False, True])
    labels = np.array([1, 1, 0, 0, 1])
    preds = np.array([1, 0, 0, 1, 1])  # rows 0, 2, 4 fitted; row 1 mispredicted; row 3 not flagged
    assert apply_fit_filter(flagged, preds, labels).tolist() == [True, False, True, False, True]


def test_cube_detect_fit_filter_drops_misfit_rows_in_other_labels_cluster():
    """Clean label-1 rows sitting in the label-0 blob are flagged by the rule, but the model
    predicts them as 0 (misfit), so the fit filter unflags them; the planted poison stays flagged."""
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(3, 16)) * 10
    x = np.concatenate([centers[0] + rng.normal(size=(300, 16)), centers[1] + rng.normal(size=(300, 16)),
                        centers[2] + rng.normal(size=(40, 16)), centers[0] + rng.normal(size=(10, 16))])
    labels = np.array([0] * 300 + [1] * 300 + [1] * 40 + [1] * 10)
    truth = np.array([False] * 600 + [True] * 40 + [False] * 10)
    preds = labels.copy()
    preds[640:] = 0  # the misfit clean rows are predicted as their cluster's label
    from rga.detection import cube_detect, detection_scores

    kw = dict(seed=0, n_neighbors=30, min_cluster_size=20, min_samples=10)
    without = cube_detect(x, labels, 2, **kw)
    with_fit = cube_detect(x, labels, 2, predictions=preds, **kw)
    assert without.flagged[640:].all()
    assert detection_scores(without.flagged, truth)["precision"] < 0.85
    assert with_fit.flagged.tolist() == truth.tolist()



# ----------------------------------------------------------------------------- noisy oracle
@pytest.mark.parametrize("precision,recall", [(0.8, 0.8), (0.6, 0.6), (0.8, 0.6), (1.0, 1.0)])
def test_noisy_oracle_hits_precision_and_recall_on_counts(precision, recall):
    from rga.detection import noisy_oracle

    truth = np.zeros(1000, dtype=bool)
    truth[np.arange(0, 1000, 10)] = True  # 100 poisoned rows
    flagged = noisy_oracle(truth, precision, recall, seed=3)
    s = detection_scores(flagged, truth)
    assert s["true_positives"] == round(100 * recall)
    assert s["precision"] == pytest.approx(precision)
    assert s["recall"] == pytest.approx(recall)
    again = noisy_oracle(truth, precision, recall, seed=3)
    assert (again == flagged).all()
    if precision < 1 or recall < 1:
        assert (noisy_oracle(truth, precision, recall, seed=4) != flagged).any()


@pytest.mark.parametrize("kwargs,match", [({"precision": 0.0, "recall": 0.5}, "detect.precision"),
                                          ({"precision": 0.5, "recall": 1.5}, "detect.recall"),
                                          ({"precision": 0.01, "recall": 1.0}, "only 10 clean rows")])
def test_noisy_oracle_refuses_bad_settings(kwargs, match):
    from rga.detection import noisy_oracle

    truth = np.array([True] * 10 + [False] * 10)
    with pytest.raises(ValueError, match=match):
        noisy_oracle(truth, **kwargs)
