"""LLM-judge ground truth through any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp,
Ollama, OpenAI ...).

The judge asks whether two questions are "alike" (same kind of problem / same method) and expects a JSON
answer {"similar": true|false}, or on the graded scale (`scale="1-5"`) {"grade": 1..5}, 5 = solved the same
way, 1 = unrelated: the proof of concept's reranker failed because its judge graded 1–5 while it answered
yes/no, so both ends can now speak grades. A question's figures go to vision endpoints as `image_url` parts
(base64 data URLs) after its text. It survives a flaky server: timeouts, connection errors, HTTP 429 and 5xx
are retried with exponential backoff; an answer that is not that JSON is counted as malformed and the
pair left unjudged (never guessed). Valid judgements are cached on disk (JSON Lines keyed by the
endpoint's model, the prompt version and both texts), so a rerun or a resumed run asks only new pairs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lookalike.errors import LookalikeError

PROMPT_VERSION = "v1"
_TASK = (
    "You judge an exam item bank. Two questions are alike when a student would solve them the same way "
    "(same kind of problem and method), whatever the names, numbers or story. "
)
SYSTEM = _TASK + 'Answer only with JSON: {"similar": true} or {"similar": false}.'
SYSTEM_GRADED = (
    _TASK + "Grade how alike they are from 1 (unrelated) to 5 (solved exactly the same way); 3 means the same "
    'kind of problem with a different method or twist. Answer only with JSON: {"grade": N}.'
)


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str = Field(..., description="e.g. http://127.0.0.1:8000/v1 (the /chat/completions route is appended)")
    model: str = "judge"
    api_key_env: str | None = Field(None, description="environment variable holding the API key, if any")
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    max_tokens: int = Field(20, ge=1)
    cache: str | None = Field(None, description="JSON Lines cache of judgements")
    scale: Literal["binary", "1-5"] = Field("binary", description="yes/no, or a grade from 1 to 5")
    max_figures: int = Field(2, ge=0, description="figures sent per question (0: text only)")


def parse_answer(content: str, scale: str = "binary") -> bool | int | None:
    """True/False (binary) or 1..5 (graded) from the model's answer, or None when it is not the JSON asked for."""
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", content.strip())
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(obj, dict):
        return None
    if scale == "binary":
        return obj["similar"] if isinstance(obj.get("similar"), bool) else None
    g = obj.get("grade")
    return g if isinstance(g, int) and not isinstance(g, bool) and 1 <= g <= 5 else None


def image_part(path: Path) -> dict:
    """An OpenAI `image_url` content part holding the file as a base64 data URL."""
    import base64
    import mimetypes

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise LookalikeError(f"cannot read figure {path}: {e}") from None
    mime = mimetypes.guess_type(str(path))[0] or "image/png"
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


class LLMJudge:
    def __init__(self, cfg: JudgeConfig):
        import httpx

        self.cfg = cfg
        headers = {}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise LookalikeError(f"judge api_key_env={cfg.api_key_env!r} is not set in the environment")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(base_url=cfg.base_url.rstrip("/"), timeout=cfg.timeout_s, headers=headers)
        self.stats: Counter = Counter()
        self._cache: dict[str, bool | int] = {}
        self._cache_path = Path(cfg.cache) if cfg.cache else None
        if self._cache_path and self._cache_path.is_file():
            for line in self._cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self._cache[rec["key"]] = bool(rec["similar"]) if cfg.scale == "binary" else int(rec["grade"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.stats["cache lines unreadable"] += 1  # e.g. a line cut by a crash mid-write

    def close(self) -> None:
        self._client.close()

    def _key(self, a: str, b: str, figures: list[Path]) -> str:
        digests = [hashlib.sha1(Path(f).read_bytes()).hexdigest() for f in figures]
        parts = [self.cfg.model, PROMPT_VERSION, a, b]
        if self.cfg.scale != "binary" or digests:  # keys of text-only yes/no judgements stay what they were
            parts += [self.cfg.scale, *digests]
        return hashlib.sha1(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()

    def _user(self, a: str, b: str, figs_a: list[Path], figs_b: list[Path]) -> str | list[dict]:
        """The user message: plain text, or text and image parts (each question's figures after its text)."""
        if not figs_a and not figs_b:
            return f"Question A: {a}\nQuestion B: {b}"
        return [
            {"type": "text", "text": f"Question A: {a}"},
            *(image_part(f) for f in figs_a),
            {"type": "text", "text": f"Question B: {b}"},
            *(image_part(f) for f in figs_b),
        ]

    def _ask(self, a: str, b: str, figs_a: Sequence[Path] = (), figs_b: Sequence[Path] = ()) -> str | None:
        """The answer text, or None once every retry failed (counted by cause)."""
        import httpx

        body = {
            "model": self.cfg.model,
            "temperature": 0,
            "max_tokens": self.cfg.max_tokens,
            "messages": [
                {"role": "system", "content": SYSTEM if self.cfg.scale == "binary" else SYSTEM_GRADED},
                {"role": "user", "content": self._user(a, b, list(figs_a), list(figs_b))},
            ],
        }
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                self.stats["retries"] += 1
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            self.stats["requests"] += 1
            try:
                r = self._client.post("/chat/completions", json=body)
            except httpx.TimeoutException:
                self.stats["timeouts"] += 1
                continue
            except httpx.TransportError:
                self.stats["connection errors"] += 1
                continue
            if r.status_code == 429 or r.status_code >= 500:
                self.stats[f"http {r.status_code}"] += 1
                continue
            if r.status_code != 200:  # 4xx other than 429: our request is wrong, retrying cannot help
                raise LookalikeError(
                    f"judge endpoint {self.cfg.base_url} answered HTTP {r.status_code}: {r.text[:200]}"
                )
            try:
                return r.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                self.stats["malformed responses"] += 1
                return None
        self.stats["gave up"] += 1
        return None

    def judge(self, a: str, b: str, figs_a: Sequence[Path] = (), figs_b: Sequence[Path] = ()) -> bool | int | None:
        """True/False (binary) or a grade 1..5, or None when no valid answer came; figures only with max_figures."""
        fa, fb = list(figs_a)[: self.cfg.max_figures], list(figs_b)[: self.cfg.max_figures]
        key = self._key(a, b, [*fa, *fb])
        if key in self._cache:
            self.stats["cached"] += 1
            return self._cache[key]
        content = self._ask(a, b, fa, fb)
        if content is None:
            return None
        verdict = parse_answer(content, self.cfg.scale)
        if verdict is None:
            self.stats["malformed answers"] += 1
            return None
        self.stats["judged"] += 1
        self._cache[key] = verdict
        if self._cache_path:
            self._cache_path.parent.mkdir(parents=True, exist_ok=True)
            field = "similar" if self.cfg.scale == "binary" else "grade"
            with open(self._cache_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, field: verdict}) + "\n")
        return verdict


def judge_qrels(
    texts: dict[str, str],
    candidates: dict[str, list[str]],
    judge: LLMJudge,
    progress: bool = False,
    figures: dict[str, list[Path]] | None = None,
) -> dict[str, dict[str, int]]:
    """Judge every (query, candidate) pair. Binary: relevant = judged similar (grade 1). Graded: every judged
    pair with its grade 1..5. Unjudged pairs are left out."""
    from tqdm.auto import tqdm

    figs = figures or {}
    out: dict[str, dict[str, int]] = {}
    pairs = [(q, d) for q, ds in candidates.items() for d in ds if d != q]
    for q, d in tqdm(pairs, desc="LLM judge", unit="pair", disable=not progress):
        v = judge.judge(texts[q], texts[d], figs.get(q, []), figs.get(d, []))
        if v is None or v is False:
            continue
        out.setdefault(q, {})[d] = 1 if v is True else int(v)
    return out
