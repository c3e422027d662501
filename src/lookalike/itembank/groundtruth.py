"""Ground truth for "find questions like this one", each written as a TREC qrels file.

- label GT: every other item sharing a label (KMWP: the problem class) is relevant.
- TF-IDF GT: an item's top-n TF-IDF cosine neighbours above a threshold (character n-grams within words,
  which suits Korean agglutination without a tokenizer, and differs from the BM25 retriever's morphemes).
- LLM-judge GT: candidate pairs judged by an LLM behind an OpenAI-compatible endpoint (see `judge`).
- hybrid GT: pairs both TF-IDF and the LLM call relevant — fewer, higher-confidence pairs.
A query is never relevant to itself, and queries with no relevant item are absent (not scored as 0).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.itembank.loading import ItemBank

Qrels = dict[str, dict[str, int]]


def label_qrels(bank: ItemBank) -> Qrels:
    by_label: dict[str, list[str]] = {}
    for it in bank.items:
        for lab in it.labels:
            by_label.setdefault(lab, []).append(it.id)
    if not by_label:
        raise LookalikeError(f"{bank.report.source}: no labels loaded (schema label_field={bank.schema.label_field!r})")
    out: Qrels = {}
    for it in bank.items:
        rel = {d: 1 for lab in it.labels for d in by_label[lab] if d != it.id}
        if rel:
            out[it.id] = rel
    return out


def tfidf_neighbours(
    texts: list[str], top_n: int, analyzer: str = "char_wb", ngram_range: tuple[int, int] = (2, 4)
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosines) of each text's top-n TF-IDF neighbours, itself excluded."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from lookalike.retrieval.fusion import topk_from_scores

    x = TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range, sublinear_tf=True).fit_transform(texts)
    out_i, out_s = [], []
    for s in range(0, x.shape[0], 1024):  # sparse rows, so a chunk of cosines is (1024, n) dense at most
        sims = (x[s : s + 1024] @ x.T).toarray()
        i, v = topk_from_scores(sims, top_n, np.arange(s, min(s + 1024, x.shape[0])))
        out_i.append(i)
        out_s.append(v)
    return np.concatenate(out_i), np.concatenate(out_s)


def tfidf_qrels(bank: ItemBank, top_n: int = 10, threshold: float = 0.3) -> Qrels:
    idx, sims = tfidf_neighbours(bank.texts, top_n)
    ids = bank.ids
    out: Qrels = {}
    for q, row, srow in zip(ids, idx, sims):
        rel = {ids[j]: 1 for j, s in zip(row, srow) if s >= threshold}
        if rel:
            out[q] = rel
    return out


def intersect_qrels(a: Qrels, b: Qrels) -> Qrels:
    out: Qrels = {}
    for q in a.keys() & b.keys():
        rel = {d: min(a[q][d], b[q][d]) for d in a[q].keys() & b[q].keys() if a[q][d] > 0 and b[q][d] > 0}
        if rel:
            out[q] = rel
    return out


def write_qrels(path: Path, qrels: Qrels) -> str:
    """TREC qrels ("qid 0 docid grade"), sorted; returns the file's sha1 so results can name it exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{q} 0 {d} {g}\n" for q in sorted(qrels) for d, g in sorted(qrels[q].items())]
    data = "".join(lines).encode("utf-8")
    path.write_bytes(data)
    return hashlib.sha1(data).hexdigest()


def read_qrels(path: Path) -> Qrels:
    out: Qrels = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LookalikeError(f"cannot read qrels file {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4 or not parts[3].lstrip("-").isdigit():
            raise LookalikeError(f"{path}:{n}: expected 'qid 0 docid grade', got {line!r}")
        if int(parts[3]) > 0:
            out.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return out


def qrels_stats(qrels: Qrels) -> dict:
    sizes = [len(v) for v in qrels.values()]
    return {
        "queries": len(qrels),
        "pairs": int(sum(sizes)),
        "mean_relevant_per_query": float(np.mean(sizes)) if sizes else 0.0,
    }
