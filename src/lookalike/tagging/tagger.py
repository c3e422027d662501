"""Image → attributes: every field of the schema predicted from a product's photo, with a calibrated confidence.

Several methods each give per-value probabilities, and a combination fitted on validation pools them:

- `knn`: a similarity-weighted vote of the photo's nearest labelled products (the gallery: the training
  products, or any labelled catalogue given at tag time);
- `probe`: a linear probe (scikit-learn logistic regression, C chosen on validation) on the frozen image vector;
- `colour`: the same probe on colour features read from the pixels (colour.py), which pooled ImageNet
  features lose;
- `zero_shot`: the towers' own scores, the cosine of the photo to each value's tower embedding (other fields
  unknown), when a trained model is at hand.

Single-valued fields pool the methods log-linearly, softmax(Σ w_m log p_m), with w ≥ 0 fitted by the
validation log-likelihood: the weights' sum acts as the temperature (temperature scaling on validation),
their shares as the mix. List fields (K-Fashion 소재 / 디테일 / 스타일) are multi-label: each value gets its own
probability, a logistic regression on the methods' logits fitted on validation (Platt scaling).

Everything is plain arrays (no pickles), so a tagger travels inside a checkpoint that `torch.load` reads
with `weights_only=True`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize

from lookalike.errors import LookalikeError
from lookalike.tagging.calibration import EPS, fit_temperature, log_probs, scale, softmax

logger = logging.getLogger(__name__)

METHODS = ("knn", "probe", "colour", "zero_shot")
KNN_K, KNN_SMOOTH = 40, 1e-3  # neighbours looked up; each field votes with its first k of them (chosen on validation)
KNN_KS, KNN_TAUS = (5, 10, 20, 40), (0.02, 0.05, 0.1)
ZERO_SHOT_TAU = 0.05
C_GRID = (0.1, 1.0)
MIN_POSITIVES = 3  # a list value needs this many training products (and non-products) for a probe of its own


@dataclass
class Labelled:
    """Products as the tagger sees them: served-space unit vectors, colour features, attributes and ids."""

    vectors: np.ndarray
    colour: np.ndarray
    attributes: list[dict]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> Labelled:
        return Labelled(
            self.vectors[rows], self.colour[rows], [self.attributes[i] for i in rows], [self.ids[i] for i in rows]
        )


def _values(a: dict, name: str) -> list[str]:
    v = a.get(name)
    if v is None or v == "":
        return []
    return [str(x) for x in v if x not in (None, "")] if isinstance(v, list) else [str(v)]


@dataclass
class Linear:
    """A standardised linear model: logits = ((x − mean) / scale) @ coef.T + intercept."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    C: float = 1.0

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef.T + self.intercept

    def state(self) -> dict:
        return {
            "mean": torch.from_numpy(self.mean),
            "scale": torch.from_numpy(self.scale),
            "coef": torch.from_numpy(self.coef),
            "intercept": torch.from_numpy(self.intercept),
            "C": self.C,
        }

    @classmethod
    def from_state(cls, s: dict) -> Linear:
        return cls(s["mean"].numpy(), s["scale"].numpy(), s["coef"].numpy(), s["intercept"].numpy(), float(s["C"]))


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0).astype(np.float32)
    sd = x.std(0).astype(np.float32)
    return mean, np.where(sd > 1e-6, sd, 1.0).astype(np.float32)


def fit_softmax_probe(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    xv: np.ndarray,
    yv: np.ndarray,
    Cs=C_GRID,
    init: Linear | None = None,
    max_iter: int = 200,
) -> Linear:
    """Multinomial logistic regression on labelled rows (y ≥ 0), C the best of `Cs` by validation accuracy;
    classes absent from training keep a −∞-like intercept.

    The Cs are fitted from the strongest regularisation up, each fit starting from the previous one's solution
    (`init`: a fit on similar data to start the first from: the audit refits each fold from the whole
    catalogue's fit). The problem is convex, so a start changes how fast the optimum is reached, not which;
    float32 halves the work of every step."""
    from sklearn.linear_model import LogisticRegression

    ok = y >= 0
    x, y = x[ok], y[ok]
    mean, sd = _standardiser(x) if init is None else (init.mean, init.scale)
    present = np.unique(y)
    okv = yv >= 0
    if len(present) == 1:
        intercept = np.full(n_classes, -30.0, np.float32)
        intercept[present[0]] = 0.0
        return Linear(mean, sd, np.zeros((n_classes, x.shape[1]), np.float32), intercept, float(Cs[0]))
    xs = ((x - mean) / sd).astype(np.float32)
    start = None if init is None or len(present) == 2 else (init.coef[present], init.intercept[present])
    best: tuple[float, Linear] | None = None
    for C in sorted(Cs):
        lr = LogisticRegression(C=C, max_iter=max_iter, tol=1e-3, warm_start=start is not None)
        if start is not None:
            lr.coef_, lr.intercept_ = start
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs's "did not converge" at max_iter: the C grid judges the fit
            lr.fit(xs, y)
        if len(present) > 2:
            start = (lr.coef_, lr.intercept_)
        c, b = lr.coef_.astype(np.float32), lr.intercept_.astype(np.float32)
        if len(present) == 2:  # scikit-learn keeps one row for two classes: logit of the second
            c, b = np.stack([-c[0] / 2, c[0] / 2]), np.array([-b[0] / 2, b[0] / 2], np.float32)
        coef = np.zeros((n_classes, x.shape[1]), np.float32)
        intercept = np.full(n_classes, -30.0, np.float32)
        coef[lr.classes_], intercept[lr.classes_] = c, b
        head = Linear(mean, sd, coef, intercept, C)
        acc = float((head.logits(xv[okv]).argmax(1) == yv[okv]).mean()) if okv.any() else 0.0
        if best is None or acc > best[0]:
            best = (acc, head)
    assert best is not None
    return best[1]


def fit_binary_probes(x: np.ndarray, Y: np.ndarray, xv: np.ndarray, Yv: np.ndarray, Cs=C_GRID) -> Linear:
    """One logistic regression per value of a list field (Y: (n, V) 0/1); a value with too few positives or
    negatives gets its training frequency as a constant. C: the best of `Cs` by validation log-loss."""
    from sklearn.linear_model import LogisticRegression

    mean, sd = _standardiser(x)
    xs, xvs = (x - mean) / sd, (xv - mean) / sd
    V = Y.shape[1]
    coef = np.zeros((V, x.shape[1]), np.float32)
    freq = np.clip(Y.mean(0), 1e-4, 1 - 1e-4)
    intercept = np.log(freq / (1 - freq)).astype(np.float32)
    Cv = np.zeros(V, np.float32)
    for v in range(V):
        pos = int(Y[:, v].sum())
        if pos < MIN_POSITIVES or len(Y) - pos < MIN_POSITIVES:
            continue
        best = None
        for C in Cs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lr = LogisticRegression(C=C, max_iter=300, tol=1e-3).fit(xs, Y[:, v])
            z = xvs @ lr.coef_[0] + lr.intercept_[0]
            p = np.clip(1 / (1 + np.exp(-z)), EPS, 1 - EPS)
            loss = float(-(Yv[:, v] * np.log(p) + (1 - Yv[:, v]) * np.log(1 - p)).mean()) if len(Yv) else 0.0
            if best is None or loss < best[0]:
                best = (loss, lr.coef_[0], lr.intercept_[0], C)
        assert best is not None
        coef[v], intercept[v], Cv[v] = best[1], best[2], best[3]
    return Linear(mean, sd, coef, intercept, float(np.median(Cv[Cv > 0])) if (Cv > 0).any() else 1.0)


def knn(queries: np.ndarray, gallery: np.ndarray, k: int, exclude: np.ndarray | None = None, chunk: int = 1024):
    """(rows (n, k), similarities (n, k)) of each query's k most similar gallery rows; `exclude`: one gallery
    row per query left out (−1: none), e.g. the product itself."""
    k = min(k, len(gallery) - (0 if exclude is None else 1))
    if k <= 0:
        raise LookalikeError("the tagger's gallery is empty")
    rows = np.empty((len(queries), k), np.int64)
    sims = np.empty((len(queries), k), np.float32)
    for s in range(0, len(queries), chunk):
        S = queries[s : s + chunk] @ gallery.T
        if exclude is not None:
            ex = exclude[s : s + chunk]
            m = ex >= 0
            S[np.nonzero(m)[0], ex[m]] = -np.inf
        top = np.argpartition(-S, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(S, top, 1)
        order = np.argsort(-top_sims, axis=1, kind="stable")  # most similar first: a field votes with a prefix
        rows[s : s + chunk] = np.take_along_axis(top, order, 1)
        sims[s : s + chunk] = np.take_along_axis(top_sims, order, 1)
    return rows, sims


def knn_weights(sims: np.ndarray, tau: float) -> np.ndarray:
    w = np.exp((sims - sims.max(1, keepdims=True)) / tau)
    return w / w.sum(1, keepdims=True)


@dataclass
class FieldTagger:
    """One field: its values, the fitted heads, the gallery's labels and the combination."""

    name: str
    multi: bool
    classes: list[str]
    heads: dict[str, Linear] = field(default_factory=dict)  # "probe", "colour"
    value_vectors: np.ndarray | None = None  # zero-shot: (C, d) unit tower embeddings of each value
    weights: dict[str, float] = field(default_factory=dict)
    bias: float = 0.0  # list fields: the combination's intercept
    temperatures: dict[str, float] = field(default_factory=dict)  # per method, fitted on validation
    # gallery labels: single → codes (n,), −1 unknown; list → (n, C) 0/1
    gallery_labels: np.ndarray | None = None
    knn_k: int = 20  # the kNN vote: how many neighbours, and the temperature of their similarity weights
    knn_tau: float = 0.05

    def encode(self, attributes: list[dict]) -> np.ndarray:
        index = {v: i for i, v in enumerate(self.classes)}
        if self.multi:
            Y = np.zeros((len(attributes), len(self.classes)), np.float32)
            for r, a in enumerate(attributes):
                for v in _values(a, self.name):
                    if v in index:
                        Y[r, index[v]] = 1
            return Y
        return np.array([index.get((_values(a, self.name) or [""])[0], -1) for a in attributes], np.int64)

    def method_probs(self, data: Labelled, nb: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        """Each method's probabilities (single: rows sum to 1; list: one probability per value)."""
        out: dict[str, np.ndarray] = {"knn": self.knn_probs(nb)}
        for name, head in self.heads.items():
            z = head.logits(data.vectors if name == "probe" else data.colour)
            out[name] = 1 / (1 + np.exp(-z)) if self.multi else softmax(z)
        if self.value_vectors is not None:
            z = data.vectors @ self.value_vectors.T / ZERO_SHOT_TAU
            out["zero_shot"] = 1 / (1 + np.exp(-z)) if self.multi else softmax(z)
        return out

    def knn_probs(self, nb: tuple[np.ndarray, np.ndarray], k: int | None = None, tau: float | None = None):
        """The similarity-weighted vote of the first k neighbours (single: a distribution; list: each value's
        weighted share), smoothed so that no value is impossible."""
        assert self.gallery_labels is not None
        k, tau = k or self.knn_k, tau or self.knn_tau
        rows, sims = nb[0][:, :k], nb[1][:, :k]
        w = knn_weights(sims, tau)
        C = len(self.classes)
        if self.multi:
            share = np.einsum("nk,nkc->nc", w, self.gallery_labels[rows])
            return np.clip(share, KNN_SMOOTH, 1 - KNN_SMOOTH)
        vote = np.zeros((len(rows), C), np.float32)
        labels = self.gallery_labels[rows]
        known = labels >= 0
        np.add.at(vote, (np.nonzero(known)[0], labels[known]), w[known])
        total = vote.sum(1, keepdims=True)
        vote = np.where(total > 0, vote / np.where(total > 0, total, 1), 1.0 / C)
        return (1 - KNN_SMOOTH) * vote + KNN_SMOOTH / C

    def choose_knn(self, nb: tuple[np.ndarray, np.ndarray], y: np.ndarray) -> None:
        """k and the temperature of the vote: the pair with the best validation log-likelihood."""
        best = None
        for k in KNN_KS:
            for tau in KNN_TAUS:
                p = self.knn_probs(nb, k, tau)
                if self.multi:
                    q = np.where(y > 0, p, 1 - p)
                    nll = float(-np.log(np.clip(q, EPS, 1)).mean())
                else:
                    ok = y >= 0
                    nll = float(-np.log(np.clip(p[ok, y[ok]], EPS, 1)).mean()) if ok.any() else 0.0
                if best is None or nll < best[0]:
                    best = (nll, k, tau)
        assert best is not None
        self.knn_k, self.knn_tau = best[1], best[2]

    def combine(self, probs: dict[str, np.ndarray], calibrated: bool = True) -> np.ndarray:
        """The pooled probabilities; `calibrated=False`: the same mix at temperature 1 (list fields: the
        plain mean of the methods), the 'before calibration' figure."""
        ms = [m for m in self.weights if m in probs]
        if self.multi:
            if not calibrated:
                return np.mean([probs[m] for m in ms], 0)
            z = sum(self.weights[m] * _logit(probs[m]) for m in ms) + self.bias
            return 1 / (1 + np.exp(-z))
        total = sum(self.weights[m] for m in ms) or 1.0
        z = np.sum([self.weights[m] * log_probs(probs[m]) for m in ms], axis=0)
        return softmax(z if calibrated else z / total)

    def calibrated(self, method: str, p: np.ndarray) -> np.ndarray:
        """One method's probabilities, temperature-scaled as fitted on validation."""
        t = self.temperatures.get(method, 1.0)
        if self.multi:
            return 1 / (1 + np.exp(-_logit(p) / t))
        return scale(p, t)

    def fit_combination(self, probs: dict[str, np.ndarray], y: np.ndarray) -> None:
        ms = list(probs)
        if self.multi:
            from sklearn.linear_model import LogisticRegression

            X = np.stack([_logit(probs[m]).ravel() for m in ms], 1)
            t = y.ravel()
            if len(np.unique(t)) < 2:
                self.weights, self.bias = {m: 1.0 / len(ms) for m in ms}, 0.0
            else:
                lr = LogisticRegression(C=10.0, max_iter=500).fit(X, t)
                self.weights = {m: float(c) for m, c in zip(ms, lr.coef_[0])}
                self.bias = float(lr.intercept_[0])
            for m in ms:
                self.temperatures[m] = _fit_binary_temperature(probs[m], y)
            return
        ok = y >= 0
        for m in ms:
            self.temperatures[m] = fit_temperature(probs[m], y)
        if ok.sum() < 2:
            self.weights = {m: 1.0 / len(ms) for m in ms}
            return
        L = np.stack([log_probs(probs[m][ok]) for m in ms])  # (M, n, C)
        yy = y[ok]

        def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
            q = softmax(np.tensordot(w, L, 1))
            picked = np.arange(len(yy)), yy
            loss = -np.log(np.clip(q[picked], EPS, 1)).mean()
            # d loss / d w_m = mean over rows of (E_q[L_m] − L_m[y])
            grad = (np.einsum("nc,mnc->mn", q, L) - L[:, picked[0], picked[1]]).mean(1)
            return float(loss), grad

        res = minimize(nll, np.full(len(ms), 1.0 / len(ms)), jac=True, method="L-BFGS-B", bounds=[(0, 20)] * len(ms))
        self.weights = {m: float(w) for m, w in zip(ms, res.x)}

    def state(self) -> dict:
        return {
            "name": self.name,
            "multi": self.multi,
            "classes": self.classes,
            "heads": {k: h.state() for k, h in self.heads.items()},
            "value_vectors": None if self.value_vectors is None else torch.from_numpy(self.value_vectors),
            "weights": self.weights,
            "bias": self.bias,
            "temperatures": self.temperatures,
            "knn": [self.knn_k, self.knn_tau],
        }

    @classmethod
    def from_state(cls, s: dict) -> FieldTagger:
        vv = s.get("value_vectors")
        return cls(
            s["name"],
            bool(s["multi"]),
            list(s["classes"]),
            {k: Linear.from_state(h) for k, h in s["heads"].items()},
            None if vv is None else vv.numpy(),
            dict(s["weights"]),
            float(s["bias"]),
            dict(s["temperatures"]),
            knn_k=int(s["knn"][0]),
            knn_tau=float(s["knn"][1]),
        )


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _fit_binary_temperature(p: np.ndarray, y: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    z = _logit(p)

    def nll(log_t: float) -> float:
        q = np.clip(1 / (1 + np.exp(-z / np.exp(log_t))), EPS, 1 - EPS)
        return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


class Tagger:
    """Every field's `FieldTagger` plus the labelled gallery the kNN vote reads (its vectors kept in float16)."""

    def __init__(self, fields: list[FieldTagger], gallery: np.ndarray, gallery_ids: list[str], k: int = KNN_K):
        self.fields = {f.name: f for f in fields}
        self.gallery = np.ascontiguousarray(gallery, np.float32)
        self.gallery_ids = list(gallery_ids)
        self._row = {pid: i for i, pid in enumerate(self.gallery_ids)}
        self._labels_attributes: list[dict] = []
        self.k = k

    @classmethod
    def fit(
        cls,
        train: Labelled,
        val: Labelled,
        single_fields: list[str],
        list_fields: list[str],
        value_vectors: dict[str, Callable[[list[str]], np.ndarray]] | None = None,
        methods: tuple[str, ...] = METHODS,
    ) -> Tagger:
        """Heads on `train`, their C and the combination on `val`. `value_vectors`: field → function of its
        classes giving the zero-shot value embeddings (see `zero_shot_vectors`)."""
        if len(train) == 0 or len(val) == 0:
            raise LookalikeError("the tagger needs training and validation products")
        fields = []
        nb_val = knn(val.vectors, train.vectors, KNN_K)
        for name in [*single_fields, *list_fields]:
            multi = name in list_fields
            classes = sorted({v for a in train.attributes for v in _values(a, name)})
            if not classes:
                logger.warning("tagger: field %r has no value in the training products; not tagged", name)
                continue
            ft = FieldTagger(name, multi, classes)
            y, yv = ft.encode(train.attributes), ft.encode(val.attributes)
            ft.gallery_labels = y
            for m, x, xv in (("probe", train.vectors, val.vectors), ("colour", train.colour, val.colour)):
                if m not in methods:
                    continue
                if multi:
                    ft.heads[m] = fit_binary_probes(x, y, xv, yv)
                else:
                    ft.heads[m] = fit_softmax_probe(x, y, len(classes), xv, yv)
            ft.choose_knn(nb_val, yv)
            if "zero_shot" in methods and value_vectors and name in value_vectors:
                ft.value_vectors = value_vectors[name](classes)
            probs = ft.method_probs(val, nb_val)
            if "knn" not in methods:
                probs.pop("knn")
            ft.fit_combination(probs, yv)
            ft.gallery_labels = None
            fields.append(ft)
            logger.info(
                "tagger: %s (%d values; kNN k %d, τ %g) weights %s",
                name,
                len(classes),
                ft.knn_k,
                ft.knn_tau,
                ", ".join(f"{m} {w:.2f}" for m, w in ft.weights.items()),
            )
        tagger = cls(fields, train.vectors, train.ids)
        tagger.set_gallery(train.vectors, train.attributes, train.ids)
        return tagger

    def set_gallery(self, vectors: np.ndarray, attributes: list[dict], ids: list[str]) -> None:
        """Vote over these labelled products from now on (e.g. the whole catalogue a retailer keeps)."""
        self.gallery = np.ascontiguousarray(vectors, np.float32)
        self.gallery_ids = list(ids)
        self._row = {pid: i for i, pid in enumerate(self.gallery_ids)}
        for f in self.fields.values():
            f.gallery_labels = f.encode(attributes)
        self._labels_attributes = attributes

    def neighbours(self, vectors: np.ndarray, exclude_ids: list[str | None] | None = None):
        ex = None
        if exclude_ids is not None:
            ex = np.array([self._row.get(i, -1) if i is not None else -1 for i in exclude_ids], np.int64)
        return knn(vectors, self.gallery, self.k, ex)

    def method_probs(self, data: Labelled, exclude_ids: list[str | None] | None = None) -> dict[str, dict]:
        nb = self.neighbours(data.vectors, exclude_ids)
        return {name: f.method_probs(data, nb) for name, f in self.fields.items()}

    def predict(self, data: Labelled, exclude_ids: list[str | None] | None = None) -> dict[str, np.ndarray]:
        """Calibrated probabilities per field: (n, values)."""
        return {name: self.fields[name].combine(p) for name, p in self.method_probs(data, exclude_ids).items()}

    def tags(self, probs: dict[str, np.ndarray], row: int, alternatives: int = 3) -> dict:
        """One product's tags in the API's shape: field → value, confidence, alternatives [[value, p], …]
        (list fields: the values with p ≥ 0.5, the least sure of them as the confidence, and per-value
        probabilities)."""
        out = {}
        for name, P in probs.items():
            f = self.fields[name]
            p = P[row]
            order = np.argsort(-p, kind="stable")
            if f.multi:
                chosen = [int(i) for i in order if p[i] >= 0.5]
                rest = [int(i) for i in order if p[i] < 0.5]
                out[name] = {
                    "value": [f.classes[i] for i in chosen],
                    "confidence": round(float(min(p[chosen]) if chosen else 1 - p[order[0]]), 4),
                    "alternatives": [[f.classes[i], round(float(p[i]), 4)] for i in rest[:alternatives]],
                    "probabilities": {f.classes[i]: round(float(p[i]), 4) for i in order[:10]},
                }
            else:
                out[name] = {
                    "value": f.classes[order[0]],
                    "confidence": round(float(p[order[0]]), 4),
                    "alternatives": [[f.classes[i], round(float(p[i]), 4)] for i in order[1 : 1 + alternatives]],
                }
        return out

    def state(self) -> dict:
        """Plain tensors and lists: the gallery in float16 (its labels are re-derived from its attributes)."""
        return {
            "format": "lookalike-tagger/1",
            "k": self.k,
            "fields": [f.state() for f in self.fields.values()],
            "gallery": torch.from_numpy(self.gallery.astype(np.float16)),
            "gallery_ids": self.gallery_ids,
            "gallery_attributes": [{k: a[k] for k in self.fields if k in a} for a in self._labels_attributes],
        }

    @classmethod
    def from_state(cls, s: dict) -> Tagger:
        if s.get("format") != "lookalike-tagger/1":
            raise LookalikeError(f"unknown tagger format {s.get('format')!r}")
        t = cls(
            [FieldTagger.from_state(f) for f in s["fields"]], s["gallery"].float().numpy(), s["gallery_ids"], s["k"]
        )
        t.set_gallery(t.gallery, s["gallery_attributes"], s["gallery_ids"])
        return t


def zero_shot_vectors(model, fields: list[str]) -> dict:
    """field → (classes → (C, d) unit tower embeddings of each value alone, every other field unknown)."""
    from lookalike.vectors import unit

    def of(name: str):
        return lambda classes: unit(model.encode_attributes([{name: c} for c in classes]))

    return {name: of(name) for name in fields if name in model.vocab.fields}
