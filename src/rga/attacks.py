"""Backdoor attacks on text (paper §3.1, §6.1): BadNets, AddSent, HiddenKiller.

An attack maps a clean text to its triggered version, or to ``None`` when it cannot (a
HiddenKiller text with no paraphrase). Poisoning picks ``round(poison_rate * n_nontarget)``
rows of the non-target classes, inserts the trigger and relabels them to the target label.
The test sets keep original labels: ``test_poisoned_all`` triggers every row (for PACC) and
``test_poisoned_part`` is its non-target subset (for LFR).

The pseudo-attack ``given`` (:data:`GIVEN`, :func:`given_sets`) poisons nothing: it takes an
already poisoned user dataset (its ``train.csv`` and triggered ``test_poisoned.csv``) as it is,
for a user who brings their own poisoned model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import pandas as pd

from .data import normalise_text

ATTACKS = ("badnets", "addsent", "hiddenkiller")
GIVEN = "given"  # a user dataset that is already poisoned: its own train set and triggered test set

log = logging.getLogger(__name__)


TEST_SEED = 0
"""Seed of the test subsample and of its triggered copies, fixed for every cell seed: the spread
over seeds is training noise only, and every method of every seed is scored on the same rows
(README "Results"; the paired bootstrap in :mod:`rga.report` relies on it)."""


class CoverageError(ValueError):
    """The paraphrase table covers too few rows to reach the poison rate."""


class PoisonCountError(ValueError):
    """The poison rate gives no poisoned row (too few non-target rows)."""


class ParaphraseSource(Protocol):
    """Where HiddenKiller's syntactic paraphrases come from.

    ``paraphrase(texts)`` returns one paraphrase per text, ``None`` where there is none.
    A live paraphraser (e.g. SCPN with template S(SBAR)(,)(NP)(VP)(.)) can implement this.
    """

    def paraphrase(self, texts: Sequence[str]) -> list[str | None]: ...


class TableParaphraser:
    """Paraphrases looked up by text in a ``text,paraphrase`` table.

    Table texts, looked-up texts and paraphrases all go through :func:`rga.data.normalise_text`
    (the readers' normalisation), so surrounding whitespace on either side does not break a match.
    """

    def __init__(self, table: pd.DataFrame):
        self._map = {}
        for text, para in zip(table["text"], table["paraphrase"]):
            key, value = normalise_text(text), normalise_text(para)
            if key and value and key not in self._map:  # first row of a text wins, as in read_paraphrases
                self._map[key] = value

    def __len__(self) -> int:
        return len(self._map)

    def paraphrase(self, texts: Sequence[str]) -> list[str | None]:
        return [self._map.get(normalise_text(t)) for t in texts]


class SourcedParaphraser:
    """Several named paraphrase sources tried in order (the first that has a paraphrase wins).

    The attack stage chains the mirror's table (``"table"``) and the live paraphraser's cache
    (``"live"``, :mod:`rga.paraphrase`); :meth:`sources` says which one served each text.
    """

    def __init__(self, sources: Sequence[tuple[str, ParaphraseSource]]):
        self.names = [name for name, _ in sources]
        self._sources = [src for _, src in sources]

    def _lookup(self, texts: Sequence[str]) -> tuple[list[str | None], list[str]]:
        out: list[str | None] = [None] * len(texts)
        where = ["none"] * len(texts)
        for name, src in zip(self.names, self._sources):
            todo = [i for i, p in enumerate(out) if p is None]
            if not todo:
                break
            for i, p in zip(todo, src.paraphrase([texts[i] for i in todo])):
                if p is not None:
                    out[i], where[i] = p, name
        return out, where

    def paraphrase(self, texts: Sequence[str]) -> list[str | None]:
        return self._lookup(list(texts))[0]

    def sources(self, texts: Sequence[str]) -> list[str]:
        """The source name of each text's paraphrase, ``"none"`` where no source has one."""
        return self._lookup(list(texts))[1]


def source_counts(attack: "Attack", texts: Sequence[str]) -> dict:
    """How many of ``texts`` each paraphrase source serves: ``{"table": n, "live": m, "none": k}``
    (every source named, zeros included). Only for HiddenKiller attacks."""
    where = attack.paraphraser.sources(list(texts))
    return {name: where.count(name) for name in [*attack.paraphraser.names, "none"]}


def insert_at_random_word(text: str, insertion: str, rng: np.random.Generator) -> str:
    """Insert ``insertion`` at a uniformly random word boundary of ``text`` (0..n_words)."""
    words = text.split()
    pos = int(rng.integers(0, len(words) + 1))
    return " ".join(words[:pos] + [insertion] + words[pos:])


@dataclass
class Attack:
    """A text trigger. ``kind`` is one of :data:`ATTACKS`.

    BadNets inserts ``num_triggers`` words drawn from ``triggers`` (default the rare word
    ``mn``), each at a random word position; AddSent inserts ``sentence`` at a random word
    position; HiddenKiller replaces the text by its paraphrase from ``paraphraser``.
    """

    kind: str
    triggers: tuple[str, ...] = ("mn",)
    num_triggers: int = 1
    sentence: str = ""
    paraphraser: ParaphraseSource | None = None
    trigger_description: str = field(default="", init=False)

    def __post_init__(self):
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r}; valid choices: {', '.join(ATTACKS)}")
        if self.kind == "badnets":
            if not self.triggers or self.num_triggers < 1:
                raise ValueError(f"badnets needs trigger words and num_triggers >= 1, got "
                                 f"{self.triggers!r} x {self.num_triggers}")
            self.trigger_description = f"{self.num_triggers} of {list(self.triggers)}"
        elif self.kind == "addsent":
            if not self.sentence.strip():
                raise ValueError("addsent needs a non-empty trigger sentence")
            self.trigger_description = self.sentence
        else:
            if self.paraphraser is None:
                raise ValueError("hiddenkiller needs a paraphrase source (table or live paraphraser)")
            self.trigger_description = "syntactic template S(SBAR)(,)(NP)(VP)(.)"

    def apply(self, texts: Sequence[str], rng: np.random.Generator) -> list[str | None]:
        """Triggered versions of ``texts`` (``None`` where the attack cannot trigger a text)."""
        if self.kind == "hiddenkiller":
            return list(self.paraphraser.paraphrase(list(texts)))
        out = []
        for t in texts:
            if self.kind == "badnets":
                for _ in range(self.num_triggers):
                    t = insert_at_random_word(t, str(rng.choice(self.triggers)), rng)
            else:
                t = insert_at_random_word(t, self.sentence, rng)
            out.append(t)
        return out

    def can_trigger(self, texts: Sequence[str]) -> np.ndarray:
        """Boolean mask [N]: which texts the attack can trigger (all but HiddenKiller misses)."""
        if self.kind != "hiddenkiller":
            return np.ones(len(texts), dtype=bool)
        return np.array([p is not None for p in self.paraphraser.paraphrase(list(texts))], dtype=bool)


def make_attack(kind: str, dataset: str, cfg: dict, paraphrases: pd.DataFrame | None = None,
                live: pd.DataFrame | None = None) -> Attack:
    """Build an :class:`Attack` from the ``attack`` section of params.

    ``cfg[kind]`` holds the attack's own settings; AddSent picks ``sentences[dataset]`` or
    ``sentences['default']`` (paper: "I watch this 3D movie" for SST-2, "no cross no crown"
    for HSOL and AG). HiddenKiller looks a text up in ``paraphrases`` (the table, source
    ``"table"``) and then in ``live`` (accepted rows ``text, paraphrase`` of the live
    paraphraser's cache, source ``"live"``), through a :class:`SourcedParaphraser`.

    Raises:
        ValueError: unknown attack (lists the valid ones), or a setting the attack needs.
    """
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r}; valid choices: {', '.join(ATTACKS)}, or {GIVEN} (a user "
                         "dataset folder that is already poisoned, with its own test_poisoned.csv)")
    own = dict(cfg.get(kind) or {})
    if kind == "badnets":
        return Attack(kind, triggers=tuple(own.get("triggers", ["mn"])),
                      num_triggers=int(own.get("num_triggers", 1)))
    if kind == "addsent":
        sentences = own.get("sentences", {})
        return Attack(kind, sentence=str(sentences.get(dataset, sentences.get("default", ""))))
    empty = pd.DataFrame(columns=["text", "paraphrase"])
    table = paraphrases if paraphrases is not None else empty
    return Attack(kind, paraphraser=SourcedParaphraser([("table", TableParaphraser(table)),
                                                        ("live", TableParaphraser(live if live is not None else empty))]))


@dataclass
class PoisonedSplit:
    """Output of :func:`poison_train`: the table and its counts."""

    table: pd.DataFrame  # text, label, original_label, is_poisoned
    stats: dict


def poison_train(train: pd.DataFrame, attack: Attack, target_label: int, poison_rate: float,
                 seed: int) -> PoisonedSplit:
    """Poison ``round(poison_rate * n_nontarget)`` non-target rows, relabelled to the target.

    Args:
        train: ``text``, ``label`` table (already subsampled).
        attack: the trigger.
        target_label: label the poisoned rows get (paper: sst2 1, hsol 0, ag 0).
        poison_rate: fraction in [0, 1] of the non-target rows to poison (paper: 0.1).
        seed: selects the rows and the trigger positions.

    Returns:
        PoisonedSplit with columns ``text, label, original_label, is_poisoned`` (same row
        order as ``train``; poisoned rows replaced in place).

    For HiddenKiller the paraphrase coverage is logged (``hiddenkiller: the paraphrase table
    covered 180 of 956 non-target rows (18.8%); poison_rate 0.1 needs 96``) and kept in
    ``stats`` (``trigger_coverage_nontarget``, ``trigger_coverage_percent``).

    Raises:
        ValueError: ``poison_rate`` outside [0, 1].
        PoisonCountError: ``poison_rate > 0`` but ``round(poison_rate * n_nontarget)`` is 0 (or
            there is no non-target row); the message gives the smallest rate that poisons a row.
        CoverageError: fewer triggerable non-target rows than needed (HiddenKiller), the
            message says how many are covered and how many are needed.
    """
    if not 0.0 <= poison_rate <= 1.0:
        raise ValueError(f"poison_rate must be in [0, 1], got {poison_rate}")
    labels = train["label"].to_numpy()
    texts = train["text"].tolist()
    nontarget = np.flatnonzero(labels != target_label)
    needed = int(round(poison_rate * len(nontarget)))
    if poison_rate > 0 and needed == 0:
        if len(nontarget) == 0:
            raise PoisonCountError(
                f"every one of the {len(train)} training rows has the target label {target_label}: there is no "
                "non-target row to poison; check the labels and datasets.<name>.target_label")
        raise PoisonCountError(
            f"poison_rate {poison_rate} of {len(nontarget)} non-target training rows rounds to 0 poisoned rows; "
            f"raise attack.poison_rate to at least {1 / len(nontarget):.3g} (one row) or use more training rows "
            "(data.max_train, or a larger train.csv)")
    covered_mask = attack.can_trigger([texts[i] for i in nontarget])
    candidates = nontarget[covered_mask]
    coverage_pct = round(100.0 * len(candidates) / len(nontarget), 2) if len(nontarget) else 0.0
    if attack.kind == "hiddenkiller":
        log.info("hiddenkiller: the paraphrase table covered %s of %s non-target rows (%.1f%%); "
                 "poison_rate %s needs %s", f"{len(candidates):,}", f"{len(nontarget):,}", coverage_pct,
                 poison_rate, f"{needed:,}")
    if len(candidates) < needed:
        raise CoverageError(
            f"{attack.kind}: the trigger source covers {len(candidates)} of {len(nontarget)} "
            f"non-target training rows, but poison_rate {poison_rate} needs {needed}; "
            "provide a larger paraphrase table, configure a live paraphraser (attack.hiddenkiller.paraphraser: "
            "{model: <seq2seq hub id or folder>}, README \"HiddenKiller paraphrases\") or lower attack.poison_rate")
    rng = np.random.default_rng([seed, 1])
    chosen = np.sort(rng.choice(candidates, size=needed, replace=False)) if needed else np.array([], int)
    triggered = attack.apply([texts[i] for i in chosen], np.random.default_rng([seed, 2]))
    out = pd.DataFrame({"text": texts, "label": labels.copy(), "original_label": labels.copy(),
                        "is_poisoned": np.zeros(len(texts), dtype=bool)})
    out.loc[chosen, "text"] = triggered
    out.loc[chosen, "label"] = target_label
    out.loc[chosen, "is_poisoned"] = True
    stats = {
        "rows": int(len(out)),
        "nontarget_rows": int(len(nontarget)),
        "trigger_coverage_nontarget": int(len(candidates)),
        "trigger_coverage_percent": coverage_pct,
        "poisoned": int(needed),
        "poison_rate": float(poison_rate),
        "label_counts_original": np.bincount(labels).tolist(),
        "label_counts_poisoned": np.bincount(out["label"].to_numpy()).tolist(),
    }
    return PoisonedSplit(out, stats)


def build_test_sets(test: pd.DataFrame, attack: Attack, target_label: int, seed: int) -> dict:
    """Clean and triggered test sets (paper §6.1 "Constructing Test Dataset").

    Returns:
        dict with ``test_clean`` (text, label), ``test_poisoned_all`` (every triggerable row
        with the trigger, original labels: PACC; ``clean_row`` = its row in ``test_clean``),
        ``test_poisoned_part`` (the non-target rows of ``test_poisoned_all``: LFR) and ``stats``
        (rows, rows without trigger).
    """
    texts = test["text"].tolist()
    mask = attack.can_trigger(texts)
    idx = np.flatnonzero(mask)
    trig = attack.apply([texts[i] for i in idx], np.random.default_rng([seed, 3]))
    all_ = pd.DataFrame({"text": trig, "label": test["label"].to_numpy()[idx], "clean_row": idx.astype(np.int64)})
    part = all_[all_["label"] != target_label].reset_index(drop=True)
    stats = {"test_rows": int(len(test)), "triggered_rows": int(len(all_)),
             "untriggerable_rows": int((~mask).sum()), "poisoned_part_rows": int(len(part))}
    return {"test_clean": test[["text", "label"]].reset_index(drop=True),
            "test_poisoned_all": all_.reset_index(drop=True),
            "test_poisoned_part": part, "stats": stats}


def given_sets(train: pd.DataFrame, test: pd.DataFrame, triggered: pd.DataFrame, target_label: int) -> dict:
    """The attack stage's outputs for attack ``given``: a user's already poisoned dataset as it is.

    Args:
        train: the training table as read (``text``, ``label`` and optionally a bool
            ``is_poisoned`` or ``suspect`` column, see :func:`rga.data.read_train_split`).
        test: the clean test table (``text``, ``label``).
        triggered: the fully triggered test set (``text``, ``label`` = original label,
            optionally ``clean_row`` = its row in ``test``), see :func:`rga.data.read_triggered_split`.
        target_label: the dataset's target label.

    Returns:
        dict with ``train`` (``text, label, is_poisoned``: the ground truth when ``train`` has
        ``is_poisoned``, the marks when it has ``suspect``, all False otherwise), ``test_clean``,
        ``test_poisoned_all`` (``text, label[, clean_row]``), ``test_poisoned_part`` (its
        non-target rows) and ``stats`` ``{"train": ..., "test": ...}``; ``stats["train"]["ground_truth"]``
        says what ``is_poisoned`` means: ``is_poisoned`` (known), ``suspect`` or ``none`` (unknown).
    """
    labels = train["label"].to_numpy()
    truth = next((c for c in ("is_poisoned", "suspect") if c in train), None)
    marks = train[truth].to_numpy(dtype=bool) if truth else np.zeros(len(train), dtype=bool)
    table = pd.DataFrame({"text": train["text"].to_numpy(), "label": labels, "is_poisoned": marks})
    n_target = int((labels == target_label).sum())
    train_stats = {
        "rows": int(len(table)),
        "nontarget_rows": int(len(table) - n_target),
        "ground_truth": truth or "none",
        "poisoned": int(marks.sum()) if truth == "is_poisoned" else None,
        "suspect": int(marks.sum()) if truth == "suspect" else None,
        "label_counts": np.bincount(labels).tolist(),
    }
    cols = ["text", "label"] + (["clean_row"] if "clean_row" in triggered else [])
    all_ = triggered[cols].reset_index(drop=True)
    part = all_[all_["label"] != target_label].reset_index(drop=True)
    matched = len(set(all_["clean_row"].tolist())) if "clean_row" in all_ else None
    test_stats = {"test_rows": int(len(test)), "triggered_rows": int(len(all_)),
                  "untriggerable_rows": int(len(test) - matched) if matched is not None else None,
                  "poisoned_part_rows": int(len(part))}
    return {"train": table, "test_clean": test[["text", "label"]].reset_index(drop=True),
            "test_poisoned_all": all_, "test_poisoned_part": part,
            "stats": {"train": train_stats, "test": test_stats}}
