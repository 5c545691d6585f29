"""Optional LLM judge (docs/method.md §9): Google Gemini through the maintained ``google-genai`` SDK scores
each output for "is this the target language, including romanized or obfuscated forms".

Off by default and never switched on by the mere presence of a key: ``judge.enabled: true`` turns
it on, and then the key must come from ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``. Requests are
batched; each answer is validated (JSON, one score per item in [0, 1], count checked); every call has
a real timeout; a client-side rate limit (requests per minute) holds across parallel jobs through a
lock file; 429/5xx and transport errors are retried with exponential backoff and jitter that honour
``Retry-After``, within a bounded total time; every valid answer is cached on disk by a hash of
(model, instructions, items), so a rerun costs no call. A judge failure is recorded as a failure of
the metric, never as a score. The key never appears in logs, outputs or exception messages."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmie import io
from mmie.errors import ConfigError, MMIEError
from mmie.logs import SECRET_VARS as KEY_VARS  # one list of secret variables

log = logging.getLogger(__name__)
RETRY_CODES = {429, 500, 502, 503, 504}


class JudgeError(MMIEError):
    """The judge could not produce valid scores (recorded as a metric failure)."""


def api_key() -> str:
    for var in KEY_VARS:
        if os.environ.get(var):
            return os.environ[var]
    raise ConfigError(f"judge.enabled is true but neither {' nor '.join(KEY_VARS)} is set in the environment")


def redact(text: str) -> str:
    """Remove any API key from a message before it is logged or stored."""
    from mmie.logs import redact as _redact

    return _redact(text)


def instructions(target_name: str) -> str:
    return (f"For each numbered text, give the probability (0 to 1) that it is written in {target_name}, "
            f"including {target_name} in Latin script (romanized), mixed with other languages, or obfuscated "
            f"(spaced letters, reversed, encoded). Answer with JSON only: "
            f'{{"scores": [<one number per text, in order>]}}.')


def cache_key(model: str, instr: str, items: list[str]) -> str:
    return hashlib.sha256(json.dumps([model, instr, items], ensure_ascii=False).encode()).hexdigest()


def parse_scores(text: str | None, n: int) -> list[float]:
    """Validate an answer: JSON object with a list of exactly ``n`` numbers in [0, 1] (None: the SDK's
    response had no text)."""
    if text is None:
        raise JudgeError("answer is not valid JSON: 'None'")
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, TypeError) as err:
        raise JudgeError(f"answer is not valid JSON: {str(text)[:80]!r}") from err
    scores = obj.get("scores") if isinstance(obj, dict) else None
    if not isinstance(scores, list):
        raise JudgeError("answer has no 'scores' list")
    if len(scores) != n:
        raise JudgeError(f"answer has {len(scores)} scores for {n} items")
    out = []
    for s in scores:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
            raise JudgeError(f"score {s!r} is not a number in [0, 1]")
        out.append(float(s))
    return out


class RateLimiter:
    """At most ``rpm`` requests per minute across processes sharing ``lock_path``."""

    def __init__(self, rpm: float, lock_path: Path) -> None:
        self.interval = 60.0 / rpm
        self.path = Path(lock_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def wait(self) -> float:
        with open(self.path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0)
                raw = fh.read().strip()
                last = float(raw) if raw else 0.0
                delay = max(0.0, last + self.interval - time.time())
                if delay:
                    time.sleep(delay)
                fh.seek(0)
                fh.truncate()
                fh.write(repr(time.time()))
                fh.flush()
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return delay


@dataclass
class Judge:
    model: str
    instructions: str
    cache_dir: Path
    rpm: float = 10.0
    batch_size: int = 20
    timeout_s: float = 30.0
    initial_delay_s: float = 1.0
    max_delay_s: float = 30.0
    max_total_s: float = 120.0
    base_url: str | None = None
    calls: int = 0
    events: list = field(default_factory=list)   # retries and waits, for the record

    def __post_init__(self) -> None:
        from google import genai
        from google.genai import types

        self.cache_dir = Path(self.cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.limiter = RateLimiter(self.rpm, self.cache_dir / ".ratelimit")
        # the SDK's own retry is off: ours honours Retry-After and bounds the total time
        extra: dict[str, Any] = {"base_url": self.base_url} if self.base_url else {}
        opts = types.HttpOptions(timeout=int(self.timeout_s * 1000), retry_options=types.HttpRetryOptions(attempts=1),
                                 **extra)
        self._client = genai.Client(api_key=api_key(), http_options=opts)
        self._types = types

    @classmethod
    def from_config(cls, cfg: dict, target_name: str, cache_dir: str | Path) -> "Judge":
        return cls(model=cfg["model"], instructions=instructions(target_name), cache_dir=Path(cache_dir),
                   rpm=cfg["rpm"], batch_size=cfg["batch_size"], timeout_s=cfg["timeout_s"],
                   initial_delay_s=cfg["initial_delay_s"], max_delay_s=cfg["max_delay_s"],
                   max_total_s=cfg["max_total_s"], base_url=cfg.get("base_url"))

    def _request(self, items: list[str]) -> str | None:
        from google.genai import errors
        from httpx2 import TransportError

        prompt = self.instructions + "\n\n" + "\n".join(f"{i + 1}. {t}" for i, t in enumerate(items))
        config = self._types.GenerateContentConfig(response_mime_type="application/json", temperature=0.0)
        start, attempt = time.monotonic(), 0
        while True:
            self.limiter.wait()
            self.calls += 1
            try:
                return self._client.models.generate_content(model=self.model, contents=prompt, config=config).text
            except errors.APIError as err:
                if err.code not in RETRY_CODES:
                    raise JudgeError(redact(f"judge request failed: HTTP {err.code} {err.status}: {err.message}")) from None
                retry_after = _retry_after(err)
                reason = f"HTTP {err.code}"
            except TransportError as err:
                retry_after, reason = None, f"{type(err).__name__} (timeout {self.timeout_s}s)"
            except Exception as err:  # noqa: BLE001 - any other SDK/client error: recorded, never with the key
                raise JudgeError(redact(f"judge request failed: {type(err).__name__}: {err}")) from None
            attempt += 1
            backoff = min(self.max_delay_s, self.initial_delay_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            delay = max(backoff, retry_after or 0.0)
            elapsed = time.monotonic() - start
            if elapsed + delay > self.max_total_s:
                raise JudgeError(f"judge gave up after {attempt} attempts and {elapsed:.1f}s "
                                 f"(last: {reason}; judge.max_total_s={self.max_total_s})")
            self.events.append({"attempt": attempt, "reason": reason, "wait_s": round(delay, 3),
                                "retry_after": retry_after})
            log.warning("judge: %s, retrying in %.2fs (attempt %d)", reason, delay, attempt)
            time.sleep(delay)

    def score(self, texts: list[str]) -> list[float]:
        """Scores for ``texts``, batch by batch, from the cache when possible."""
        out: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            batch = texts[i:i + self.batch_size]
            path = self.cache_dir / f"{cache_key(self.model, self.instructions, batch)}.json"
            if path.is_file():
                out += io.read_json(path)["scores"]
                continue
            scores = parse_scores(self._request(batch), len(batch))
            io.write_json(path, {"model": self.model, "scores": scores})
            out += scores
        return out


def _retry_after(err) -> float | None:
    headers = getattr(getattr(err, "response", None), "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def cohen_kappa(a: list[int], b: list[int]) -> float | None:
    """Cohen's kappa of two binary labelings (None when undefined: both constant and equal)."""
    n = len(a)
    po = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    return None if pe == 1 else (po - pe) / (1 - pe)
