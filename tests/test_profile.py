"""Profiles: switching params.yaml between cpu / paper / tiny, losslessly and keeping comments."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from rga.profile import PROFILES_DIR, apply_profile, available

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


def flatten(d: dict, prefix: tuple = ()) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def comment_lines(text: str) -> list[str]:
    """Every comment in the file: full comment lines and the inline ``# ...`` parts."""
    out = []
    for line in text.splitlines():
        if "#" in line:
            out.append(line[line.index("#"):].strip())
    return out


@pytest.fixture
def params_copy(tmp_path) -> Path:
    dst = tmp_path / "params.yaml"
    shutil.copy(PARAMS, dst)
    return dst


def test_available_profiles():
    assert available() == ["cpu", "paper", "tiny"]
    assert PROFILES_DIR == REPO / "profiles"


def test_cpu_profile_leaves_committed_params_unchanged(params_copy):
    original = load(PARAMS)
    apply_profile("cpu", params_copy)
    assert load(params_copy) == original


def test_cpu_profile_values_are_the_committed_ones():
    params = flatten(load(PARAMS))
    for key, value in flatten(load(PROFILES_DIR / "cpu.yaml")).items():
        assert params[key] == value, key


def test_profiles_set_the_same_key_paths():
    keys = {name: set(flatten(load(PROFILES_DIR / f"{name}.yaml"))) for name in ("cpu", "paper", "tiny")}
    assert keys["cpu"] == keys["paper"] == keys["tiny"]
    # and every one of them exists in params.yaml, so merging never adds keys
    assert keys["cpu"] <= set(flatten(load(PARAMS)))
    assert ("detect", "min_cluster_size") in keys["cpu"]


def test_paper_then_cpu_restores_original_values(params_copy):
    original = load(PARAMS)
    apply_profile("paper", params_copy)
    paper = load(params_copy)
    assert paper != original
    assert paper["data"] == {**original["data"], "max_train": None, "max_test": None}
    assert paper["detect"]["min_cluster_size"] == 150 and paper["detect"]["min_samples"] == 120
    assert paper["models"]["minilm"]["epochs"] == 5
    assert paper["models"]["minilm"]["lr"] == pytest.approx(1.0e-4)
    assert isinstance(paper["models"]["minilm"]["lr"], float)
    assert paper["unlearn"]["eval_every"] == 1
    # keys not in the profile are untouched
    assert paper["rga"] == original["rga"]
    assert paper["models"]["minilm"]["path"] == original["models"]["minilm"]["path"]
    assert paper["detect"]["metric"] == original["detect"]["metric"]
    # the paper profile uses CUBE's own per-label rule without the fit filter
    assert paper["detect"]["rule"] == "largest" and paper["detect"]["fit_filter"] is False  # CUBE as the authors ran it
    apply_profile("cpu", params_copy)
    assert load(params_copy) == original


def test_round_trip_keeps_the_file_byte_identical(params_copy):
    before = params_copy.read_text()
    apply_profile("paper", params_copy)
    apply_profile("cpu", params_copy)
    assert params_copy.read_text() == before  # e.g. 1.0e-4 is not rewritten as 0.0001


def test_tiny_then_cpu_restores_original_values(params_copy):
    original = load(PARAMS)
    apply_profile("tiny", params_copy)
    tiny = load(params_copy)
    assert tiny["detect"]["detector"] == "oracle"
    assert tiny["unlearn"]["epochs"] == 2
    assert tiny["data"] == {**original["data"], "max_train": 240, "max_test": 60}
    apply_profile("paper", params_copy)
    apply_profile("cpu", params_copy)
    assert load(params_copy) == original


def test_profile_values_keep_their_type_for_pyyaml(params_copy):
    """After a switch, PyYAML (used by load_params and DVC) reads every profile value back with its
    type (e.g. 1.0e-4 stays a float, null stays None)."""
    for name in ("paper", "tiny", "cpu"):
        apply_profile(name, params_copy)
        now = flatten(load(params_copy))
        for key, value in flatten(load(PROFILES_DIR / f"{name}.yaml")).items():
            assert now[key] == value and type(now[key]) is type(value), (name, key, now[key], value)


def test_comments_are_preserved(params_copy):
    original_comments = comment_lines(PARAMS.read_text(encoding="utf-8"))
    assert len(original_comments) > 10
    apply_profile("paper", params_copy)
    assert comment_lines(params_copy.read_text(encoding="utf-8")) == original_comments
    apply_profile("cpu", params_copy)
    text = params_copy.read_text(encoding="utf-8")
    assert comment_lines(text) == original_comments
    assert "# rga parameters, keyed by stage." in text
    assert "# HDBSCAN; >= 1 a count (paper 150), < 1 a fraction of the rows" in text


def test_apply_profile_returns_merged_params(params_copy):
    import yaml

    before = yaml.safe_load(params_copy.read_text(encoding="utf-8"))
    out = apply_profile("tiny", params_copy)
    assert out["data"]["max_train"] == 240
    assert before["data"]["max_train"] == 2000
    assert out["matrix"]["methods"] == before["matrix"]["methods"]  # a profile leaves the matrix alone
    assert {"ga", "npo", "rga", "dga"} <= set(out["matrix"]["methods"])


def test_unknown_profile_lists_choices(params_copy):
    before = params_copy.read_text(encoding="utf-8")
    with pytest.raises(ValueError) as e:
        apply_profile("gpu", params_copy)
    msg = str(e.value)
    assert "gpu" in msg
    assert "cpu, paper, tiny" in msg
    assert params_copy.read_text(encoding="utf-8") == before  # file untouched


def test_compute_settings_are_checked_with_the_key_and_the_choices():
    from rga.pipeline import compute_settings

    assert compute_settings({"compute": {"threads": 2, "onednn_max_isa": "avx2"}}) == {"threads": 2,
                                                                                      "onednn_max_isa": "AVX2"}
    for bad, msg in (({}, "params.yaml has no compute.threads"),
                     ({"compute": {"threads": 0}}, "compute.threads must be an integer >= 1 .*got 0"),
                     ({"compute": {"threads": True}}, "compute.threads must be an integer >= 1"),
                     ({"compute": {"threads": 2, "onednn_max_isa": "AVX9"}}, "'AVX9' is not one of oneDNN's: SSE41"),
                     ({"compute": {"threads": 2, "thread": 1}}, r"unknown key\(s\) \['thread'\]")):
        with pytest.raises(ValueError, match=msg):
            compute_settings(bad)
