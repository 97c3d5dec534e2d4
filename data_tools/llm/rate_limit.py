"""The request and token budget of a run, shared by its workers."""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """Token buckets for requests and tokens per minute, plus a shared pause after a 429."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self._requests = requests_per_minute or 0.0
        self._tokens = tokens_per_minute or 0.0
        self._last = time.monotonic()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        elapsed, self._last = now - self._last, now
        if self.rpm:
            self._requests = min(self.rpm, self._requests + elapsed * self.rpm / 60)
        if self.tpm:
            self._tokens = min(self.tpm, self._tokens + elapsed * self.tpm / 60)

    async def acquire(self, tokens: int) -> int:
        """Waits until one request and `tokens` tokens fit the budget; returns the tokens charged."""
        tokens = min(tokens, int(self.tpm)) if self.tpm else tokens
        async with self._lock:  # first come first served: nobody overtakes a waiting large request
            while True:
                self._refill()
                wait = self._paused_until - time.monotonic()
                if self.rpm and self._requests < 1:
                    wait = max(wait, (1 - self._requests) * 60 / self.rpm)
                if self.tpm and self._tokens < tokens:
                    wait = max(wait, (tokens - self._tokens) * 60 / self.tpm)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self.rpm:
                self._requests -= 1
            if self.tpm:
                self._tokens -= tokens
        return tokens

    def settle(self, charged: int, actual: int) -> None:
        if self.tpm:
            self._tokens = min(self.tpm, self._tokens + charged - actual)

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
