"""Live HiddenKiller paraphrases: a Hugging Face text-to-text model behind ``ParaphraseSource``.

HiddenKiller's trigger is a syntactic paraphrase (SCPN, template ``S(SBAR)(,)(NP)(VP)(.)``). The
mirror's table covers SST-2 (and AG test rows) only; for every other row a seq2seq model
(``attack.hiddenkiller.paraphraser``) writes one. A generic paraphrase model only approximates
SCPN's syntactic template; it is the same trigger only when an SCPN-equivalent checkpoint is given.

Loading follows the project's rules (:mod:`rga.models`): safetensors weights only
(``use_safetensors=True``), never ``trust_remote_code``. Outputs go through
:func:`degenerate_reason`; rejected ones are counted, never used. The ``paraphrase`` stage keeps
every model output (accepted or not) in a per-dataset cache, ``data/paraphrases/<dataset>/``,
so the model runs once per text and the attack stage never calls it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from .data import normalise_text

REJECT_REASONS = ("empty", "identical", "repeated_tokens")
REPEAT_RUN = 3  # the same token this many times in a row ("to to to") is degenerate
CACHE_COLUMNS = ("text", "paraphrase", "status", "output")  # status: "ok" or one of REJECT_REASONS
GENERATE_KEYS = ("max_new_tokens", "num_beams", "no_repeat_ngram_size")


def degenerate_reason(text: str, output: str | None) -> str | None:
    """Why a model output is not a usable paraphrase of ``text``, or ``None`` when it is.

    Returns:
        ``"empty"`` (nothing after :func:`rga.data.normalise_text`), ``"identical"`` (equal to
        the input ignoring case and whitespace, so a tokenizer's ``film.`` equals ``film .``) or
        ``"repeated_tokens"`` (one whitespace token :data:`REPEAT_RUN` or more times in a row,
        case-insensitive, e.g. ``"to to to"``).
    """
    out = normalise_text(output) or ""
    if not out:
        return "empty"
    if "".join(out.lower().split()) == "".join((normalise_text(text) or "").lower().split()):
        return "identical"
    run, prev = 0, None
    for tok in out.lower().split():
        run = run + 1 if tok == prev else 1
        prev = tok
        if run >= REPEAT_RUN:
            return "repeated_tokens"
    return None


@dataclass(frozen=True)
class ParaphraserConfig:
    """``attack.hiddenkiller.paraphraser``.

    Attributes:
        model: hub id or local folder of a seq2seq (text-to-text) model with safetensors weights.
        template: the model's input; ``{text}`` is the sentence, ``{template}`` (optional) the SCPN
            syntactic template ``attack.hiddenkiller.template``.
        batch_size: sentences per ``generate`` call.
        max_new_tokens, num_beams, no_repeat_ngram_size: ``generate`` options (greedy by default,
            so the output is deterministic).
    """

    model: str
    template: str = "paraphrase: {text}"
    batch_size: int = 16
    max_new_tokens: int = 64
    num_beams: int = 1
    no_repeat_ngram_size: int = 0

    def prompt(self, text: str, syntactic_template: str = "") -> str:
        return self.template.format(text=text, template=syntactic_template)


def paraphraser_config(value) -> ParaphraserConfig | None:
    """Parse ``attack.hiddenkiller.paraphraser`` (``None``, ``{}`` or absent: no live paraphraser).

    Raises:
        ValueError: not a mapping, an unknown key (the message lists the valid ones), no
            ``model``, a ``template`` without ``{text}`` or with another placeholder, or a
            ``batch_size``/``max_new_tokens``/``num_beams`` below 1.
    """
    if value is None or value == {}:
        return None
    where = "attack.hiddenkiller.paraphraser"
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping like {{model: <hub id or folder>, template: 'paraphrase: "
                         f"{{text}}', batch_size: 16}}, got {value!r}")
    valid = [f for f in ParaphraserConfig.__dataclass_fields__]
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(valid)}")
    if not str(value.get("model") or "").strip():
        raise ValueError(f"{where}.model is missing: give a hub id or a local folder of a seq2seq model")
    cfg = ParaphraserConfig(**{**value, "model": str(value["model"])})
    try:
        cfg.prompt("x", "y")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"{where}.template {cfg.template!r} is not a valid template ({err!r}); use the "
                         "placeholders {text} (the sentence) and optionally {template} (the SCPN template)") from None
    if "{text}" not in cfg.template:
        raise ValueError(f"{where}.template {cfg.template!r} has no {{text}} placeholder for the sentence")
    for key in ("batch_size", "max_new_tokens", "num_beams"):
        if int(getattr(cfg, key)) < 1:
            raise ValueError(f"{where}.{key} must be >= 1, got {getattr(cfg, key)!r}")
    if int(cfg.no_repeat_ngram_size) < 0:
        raise ValueError(f"{where}.no_repeat_ngram_size must be >= 0, got {cfg.no_repeat_ngram_size!r}")
    return cfg


class LiveParaphraser:
    """A seq2seq model that paraphrases sentences (a :class:`rga.attacks.ParaphraseSource`).

    The model is loaded on the first call (``AutoTokenizer`` / ``AutoModelForSeq2SeqLM``,
    safetensors only, no remote code) and run greedily in batches of ``config.batch_size``.
    ``generated`` counts the sentences sent to the model; ``rejected`` counts degenerate
    outputs by reason (:func:`degenerate_reason`).
    """

    def __init__(self, config: ParaphraserConfig, syntactic_template: str = ""):
        self.config = config
        self.syntactic_template = syntactic_template
        self.generated = 0
        self.rejected: Counter = Counter()
        self._model = self._tok = self._max_length = None

    def _load(self) -> None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from .models import check_safetensors, pick_device, resolve_path

        path = resolve_path(self.config.model)
        if Path(path).is_dir():
            check_safetensors(path)  # UnsafeWeightsError for a folder with pickle weights only
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            model = AutoModelForSeq2SeqLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
        except ValueError as err:  # e.g. an encoder-only config
            raise ValueError(f"attack.hiddenkiller.paraphraser.model {self.config.model!r} is not a text-to-text "
                             f"(seq2seq) model that AutoModelForSeq2SeqLM can load: {err}") from None
        except OSError as err:
            raise OSError(f"attack.hiddenkiller.paraphraser.model {self.config.model!r}: cannot load it as "
                          f"safetensors (only safetensors weights are loaded, never pickle or remote code): "
                          f"{err}") from None
        self._model, self._tok = model.to(pick_device()).eval(), tok
        # inputs longer than the model's positions are cut (the tokenizer may allow more, e.g. 512)
        limits = [n for n in (tok.model_max_length, getattr(model.config, "max_position_embeddings", None))
                  if isinstance(n, int) and 0 < n < 100_000]
        self._max_length = min(limits) if limits else None

    def generate(self, texts: Sequence[str]) -> list[str]:
        """The model's raw output for every text (decoded, special tokens dropped), in order."""
        import torch

        if not texts:
            return []
        if self._model is None:
            self._load()
        c = self.config
        out: list[str] = []
        for start in range(0, len(texts), c.batch_size):
            batch = [c.prompt(t, self.syntactic_template) for t in texts[start:start + c.batch_size]]
            enc = self._tok(batch, padding=True, truncation=True, max_length=self._max_length,
                            return_tensors="pt").to(self._model.device)
            enc.pop("token_type_ids", None)
            with torch.inference_mode():
                ids = self._model.generate(**enc, do_sample=False, **{k: int(getattr(c, k)) for k in GENERATE_KEYS})
            out += self._tok.batch_decode(ids, skip_special_tokens=True)
            self.generated += len(batch)
        return out

    def paraphrase(self, texts: Sequence[str]) -> list[str | None]:
        """One paraphrase per text, ``None`` where the output is degenerate (counted in ``rejected``)."""
        result = []
        for text, output in zip(texts, self.generate(list(texts))):
            reason = degenerate_reason(text, output)
            if reason:
                self.rejected[reason] += 1
            result.append(None if reason else normalise_text(output))
        return result


def empty_cache() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in CACHE_COLUMNS})


def fill_cache(texts: Sequence[str], table: pd.DataFrame, previous: pd.DataFrame | None,
               live: LiveParaphraser | None) -> tuple[pd.DataFrame, dict]:
    """The live-paraphrase cache for ``texts``: the rows neither ``table`` nor ``previous`` covers
    are sent to ``live`` (once each); everything else is reused without calling a model.

    Args:
        texts: the sentences that may need a paraphrase (normalised, duplicates ignored).
        table: the paraphrase table (``text, paraphrase``); its texts are never sent to the model.
        previous: an earlier cache of the same model and template (columns :data:`CACHE_COLUMNS`) or None.
        live: the model; ``None`` sends nothing (the cache then holds only ``previous``'s rows).

    Returns:
        ``(cache, stats)``: ``cache`` has one row per text the model has seen, with ``status``
        ``"ok"`` (``paraphrase`` usable) or a reason of :data:`REJECT_REASONS` (``paraphrase``
        missing, the raw ``output`` kept for inspection); ``stats`` counts ``requested``
        (texts the table does not cover), ``reused`` (from ``previous``), ``generated`` (sent to the
        model now), ``accepted`` and ``rejected`` per reason, over the requested texts.
    """
    in_table = {normalise_text(t) for t in table["text"]}
    keys = list(dict.fromkeys(k for k in (normalise_text(t) for t in texts) if k))
    todo = [k for k in keys if k not in in_table]
    prev = previous if previous is not None else empty_cache()
    prev = prev[prev["text"].isin(set(todo))].drop_duplicates("text")
    new = [k for k in todo if k not in set(prev["text"])]
    rows = []
    if new and live is not None:
        for text, output in zip(new, live.generate(new)):
            reason = degenerate_reason(text, output)
            rows.append({"text": text, "paraphrase": None if reason else normalise_text(output),
                         "status": reason or "ok", "output": output})
    cache = pd.concat([prev[list(CACHE_COLUMNS)], pd.DataFrame(rows, columns=list(CACHE_COLUMNS))],
                      ignore_index=True) if rows else prev[list(CACHE_COLUMNS)].reset_index(drop=True)
    status = Counter(cache["status"])
    stats = {"texts": len(keys), "covered_by_table": len(keys) - len(todo), "requested": len(todo),
             "reused": int(len(prev)), "generated": len(rows), "accepted": int(status.get("ok", 0)),
             "rejected": {r: int(status.get(r, 0)) for r in REJECT_REASONS},
             "uncovered": len(todo) - int(len(cache))}
    cache = cache.astype(object)
    return cache.where(cache.notna(), None).reset_index(drop=True), stats


def config_record(cfg: ParaphraserConfig | None, syntactic_template: str) -> dict | None:
    """What identifies a cache: the paraphraser settings and the SCPN template (JSON-safe)."""
    return None if cfg is None else {**asdict(cfg), "syntactic_template": syntactic_template}
