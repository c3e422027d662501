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


class LiveBM25:
    """BM25 that takes writes: the same scores as bm25s's Lucene variant over the live documents, kept in
    per-term postings so that adding, replacing or removing a document costs its own terms, not a rebuild.

    bm25s precomputes every (term, document) score with the collection's idf and mean length baked in, so one
    write would mean a full re-index. Here a posting holds the raw term frequency and the scores are computed
    at query time from the current document frequencies, live count and mean length (exactly the formula
    bm25s uses: idf = ln(1 + (N − df + 0.5) / (df + 0.5)), tf / (k1 · (1 − b + b · len / mean len) + tf), one
    term per query-token occurrence). A removed document leaves a dead slot; the postings are compacted once
    the dead slots outnumber the live ones (amortised O(1) per write). Not thread-safe: the caller locks.
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self._reset()

    def _reset(self) -> None:
        from array import array

        self._array = array
        self._slot: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._tokens: list[list[str] | None] = []
        self._len = array("f")
        self._alive = bytearray()
        self._post: dict[str, tuple] = {}  # term → (array('i') slots, array('f') term frequencies)
        self._df: dict[str, int] = {}
        self.n, self.total_len = 0, 0

    def __len__(self) -> int:
        return self.n

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._slot

    @property
    def slots(self) -> int:
        """Slots in use, dead ones included: the length of `scores`' output."""
        return len(self._ids)

    def id_of(self, slot: int) -> str | None:
        return self._ids[slot]

    def slot_of(self, doc_id: str) -> int | None:
        return self._slot.get(doc_id)

    def tokens_of(self, doc_id: str) -> list[str] | None:
        s = self._slot.get(doc_id)
        return None if s is None else self._tokens[s]

    def put(self, doc_id: str, tokens: list[str]) -> None:
        """Add a document, or replace the one with this id."""
        if doc_id in self._slot:
            self.remove(doc_id)
        slot = len(self._ids)
        self._slot[doc_id] = slot
        self._ids.append(doc_id)
        self._tokens.append(list(tokens))
        self._len.append(float(len(tokens)))
        self._alive.append(1)
        counts: dict[str, int] = {}
        for t in tokens:
            counts[t] = counts.get(t, 0) + 1
        for t, c in counts.items():
            post = self._post.get(t)
            if post is None:
                post = self._post[t] = (self._array("i"), self._array("f"))
            post[0].append(slot)
            post[1].append(float(c))
            self._df[t] = self._df.get(t, 0) + 1
        self.n += 1
        self.total_len += len(tokens)

    def remove(self, doc_id: str) -> bool:
        slot = self._slot.pop(doc_id, None)
        if slot is None:
            return False
        tokens = self._tokens[slot] or []
        for t in set(tokens):
            self._df[t] -= 1
            if not self._df[t]:
                del self._df[t]
        self._alive[slot] = 0
        self._ids[slot] = self._tokens[slot] = None
        self.n -= 1
        self.total_len -= len(tokens)
        if len(self._ids) - self.n > max(1024, self.n):
            self._compact()
        return True

    def _compact(self) -> None:
        """Renumber the live documents from slot 0 (in their slot order), dropping dead postings."""
        live = [(i, t) for i, t in zip(self._ids, self._tokens) if i is not None and t is not None]
        self._reset()
        for i, t in live:
            self.put(i, t)

    def scores(self, tokens: list[str]) -> np.ndarray:
        """(slots,) float32 BM25 scores of a tokenised query; dead slots and documents sharing no term score 0."""
        out = np.zeros(len(self._ids), np.float64)
        if not self.n:
            return out.astype(np.float32)
        avg = self.total_len / self.n
        dl = np.frombuffer(self._len, np.float32) if len(self._len) else np.zeros(0, np.float32)
        alive = np.frombuffer(bytes(self._alive), np.uint8).astype(bool)
        q: dict[str, int] = {}
        for t in tokens:
            q[t] = q.get(t, 0) + 1
        for t, qc in q.items():
            post = self._post.get(t)
            df = self._df.get(t, 0)
            if post is None or not df:
                continue
            rows = np.frombuffer(post[0], np.int32)
            tf = np.frombuffer(post[1], np.float32).astype(np.float64)
            keep = alive[rows]
            rows, tf = rows[keep], tf[keep]
            idf = np.float32(np.log(1 + (self.n - df + 0.5) / (df + 0.5)))
            out[rows] += qc * (idf * tf / (self.k1 * ((1 - self.b) + self.b * dl[rows] / avg) + tf))
        return out.astype(np.float32)
