"""BM25 over Korean morphemes: kiwipiepy splits eojeol (word + particles) so "정팔각형의" matches "정팔각형이".

Whitespace tokens would treat every particle/ending variant as a different word; Kiwi's morphological
analysis keeps the content morphemes (nouns, verb/adjective stems, roots, foreign words, numbers) and
drops particles, endings and punctuation. Scoring is bm25s (Lucene BM25, k1=1.5, b=0.75).
"""

from __future__ import annotations

from functools import cache

import numpy as np

# Kiwi (Sejong) tags kept: nouns NN*, NR numerals, NP pronouns, verb/adjective stems VV/VA, roots XR,
# foreign SL, Chinese characters SH, numbers SN, determiners MM ("몇", "한"), adverbs MAG.
CONTENT_TAGS = ("NN", "NR", "NP", "VV", "VA", "XR", "SL", "SH", "SN", "MM", "MAG")


# Kiwi's built-in typo dictionary (internet spellings and misspelt endings) is not loaded: it is a third of
# Kiwi's start-up (1.1 of 3.2 s) and changes the content morphemes of none of the 2,538 KMWP problems.
KIWI_OPTIONS = {"num_workers": 1, "load_typo_dict": False}


@cache
def _kiwi():
    """One analyser per process: loading Kiwi's model takes seconds."""
    from kiwipiepy import Kiwi

    return Kiwi(**KIWI_OPTIONS)


class KiwiTokenizer:
    """Text → content morphemes (surface form, with the tag for verbs/adjectives whose stems collide)."""

    def __init__(self, keep_tags: tuple[str, ...] = CONTENT_TAGS, numbers: bool = True):
        self.keep_tags = tuple(t for t in keep_tags if numbers or t != "SN")
        self.numbers = numbers

    @property
    def _kiwi(self):
        return _kiwi()

    def config(self) -> dict:
        import kiwipiepy

        return {
            "tokenizer": "kiwipiepy",
            "version": kiwipiepy.__version__,
            "keep_tags": list(self.keep_tags),
            "typo_dict": KIWI_OPTIONS["load_typo_dict"],
        }

    def _keep(self, tokens) -> list[str]:
        out = []
        for t in tokens:
            if t.tag.startswith(self.keep_tags):
                out.append(f"{t.form}/V" if t.tag in ("VV", "VA") else t.form.lower())
        return out

    def __call__(self, texts: list[str]) -> list[list[str]]:
        return [self._keep(toks) for toks in self._kiwi.tokenize(texts)]


class BM25Retriever:
    """Item-to-item and free-text BM25 search over a fixed bank of texts."""

    name = "bm25"

    def __init__(self, texts: list[str], tokenizer: KiwiTokenizer | None = None, k1: float = 1.5, b: float = 0.75):
        import bm25s

        self.tokenizer = tokenizer or KiwiTokenizer()
        self.k1, self.b = k1, b
        self.doc_tokens = self.tokenizer(list(texts))
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self._bm25.index(self.doc_tokens, show_progress=False)
        self.n_docs = len(texts)

    def config(self) -> dict:
        return {"retriever": "bm25", "k1": self.k1, "b": self.b, **self.tokenizer.config()}

    def score_tokens(self, tokens: list[list[str]]) -> np.ndarray:
        """(n_queries, n_docs) BM25 scores; a query with no known term scores 0 everywhere."""
        out = np.zeros((len(tokens), self.n_docs), np.float32)
        for i, toks in enumerate(tokens):
            if toks:
                out[i] = self._bm25.get_scores(toks)
        return out

    def scores(self, queries: list[str]) -> np.ndarray:
        return self.score_tokens(self.tokenizer(list(queries)))

    def search(
        self,
        queries: list[str] | None = None,
        k: int = 10,
        exclude: np.ndarray | None = None,
        query_tokens: list[list[str]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores) best first, ties by index; `exclude[i]` = a doc index to leave out, or -1."""
        from lookalike.retrieval.fusion import topk_from_scores

        sc = self.score_tokens(query_tokens if query_tokens is not None else self.tokenizer(list(queries or [])))
        return topk_from_scores(sc, k, exclude)
