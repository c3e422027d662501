"""LLM-judge ground truth through any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp,
Ollama, OpenAI ...).

The judge asks whether two questions are "alike" (same kind of problem / same method) and expects a JSON
answer {"similar": true|false}. It survives a flaky server: timeouts, connection errors, HTTP 429 and 5xx
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
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from lookalike.errors import LookalikeError

PROMPT_VERSION = "v1"
SYSTEM = (
    "You judge an exam item bank. Two questions are alike when a student would solve them the same way "
    "(same kind of problem and method), whatever the names, numbers or story. Answer only with JSON: "
    '{"similar": true} or {"similar": false}.'
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


def parse_answer(content: str) -> bool | None:
    """True/False from the model's answer, or None when it is not the JSON asked for."""
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", content.strip())
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    if isinstance(obj, dict) and isinstance(obj.get("similar"), bool):
        return obj["similar"]
    return None


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
        self._cache: dict[str, bool] = {}
        self._cache_path = Path(cfg.cache) if cfg.cache else None
        if self._cache_path and self._cache_path.is_file():
            for line in self._cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self._cache[rec["key"]] = bool(rec["similar"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.stats["cache lines unreadable"] += 1  # e.g. a line cut by a crash mid-write

    def close(self) -> None:
        self._client.close()

    def _key(self, a: str, b: str) -> str:
        return hashlib.sha1(json.dumps([self.cfg.model, PROMPT_VERSION, a, b], ensure_ascii=False).encode()).hexdigest()

    def _ask(self, a: str, b: str) -> str | None:
        """The answer text, or None once every retry failed (counted by cause)."""
        import httpx

        body = {
            "model": self.cfg.model,
            "temperature": 0,
            "max_tokens": self.cfg.max_tokens,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Question A: {a}\nQuestion B: {b}"},
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

    def judge(self, a: str, b: str) -> bool | None:
        key = self._key(a, b)
        if key in self._cache:
            self.stats["cached"] += 1
            return self._cache[key]
        content = self._ask(a, b)
        if content is None:
            return None
        verdict = parse_answer(content)
        if verdict is None:
            self.stats["malformed answers"] += 1
            return None
        self.stats["judged"] += 1
        self._cache[key] = verdict
        if self._cache_path:
            self._cache_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._cache_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "similar": verdict}) + "\n")
        return verdict


def judge_qrels(
    texts: dict[str, str], candidates: dict[str, list[str]], judge: LLMJudge, progress: bool = False
) -> dict[str, dict[str, int]]:
    """Judge every (query, candidate) pair; relevant = judged similar. Unjudged pairs are left out."""
    from tqdm.auto import tqdm

    out: dict[str, dict[str, int]] = {}
    pairs = [(q, d) for q, ds in candidates.items() for d in ds if d != q]
    for q, d in tqdm(pairs, desc="LLM judge", unit="pair", disable=not progress):
        if judge.judge(texts[q], texts[d]):
            out.setdefault(q, {})[d] = 1
    return out
