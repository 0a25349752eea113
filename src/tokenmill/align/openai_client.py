"""A small client for OpenAI-compatible chat endpoints (tokenmill's own server, vLLM, llama.cpp,
hosted APIs), enough for constitutional AI to ask a model, maybe a much larger one, for answers.

    client = ChatClient(EndpointConfig(base_url="http://127.0.0.1:8000/v1", model="tiny"))
    text = client.chat([{"role": "user", "content": "Hi"}], max_tokens=32, temperature=0.7)

One POST to {base_url}/chat/completions per call over `httpx`; the official `openai` package
would do, but would be a runtime dependency for one call. A connection failure, a timeout, 429
and 5xx are retried with exponential backoff; anything else is an `EndpointError` whose message
names the endpoint, the status and the server's own explanation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import httpx

from tokenmill.align.config import EndpointConfig
from tokenmill.errors import TokenmillError

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class EndpointError(TokenmillError):
    """An endpoint refused or failed a request; `status` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _explain(response: httpx.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message"}} body, or the start of the text."""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    except ValueError:
        pass
    return response.text[:300] or response.reason_phrase


class ChatClient:
    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise TokenmillError(f"the endpoint's API key is read from ${config.api_key_env}, which is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(config.timeout, connect=min(10.0, config.timeout)))

    def chat(self, messages: Sequence[dict], max_tokens: int, temperature: float, seed: int | None = None) -> str:
        """The assistant's answer to `messages`."""
        body = {"model": self.config.model, "messages": list(messages), "max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            body["seed"] = seed
        for attempt in range(self.config.max_retries + 1):
            last = attempt == self.config.max_retries
            try:
                response = self.http.post(self.url, json=body)
            except httpx.TimeoutException:
                if last:
                    raise EndpointError(f"{self.url} did not answer within {self.config.timeout:g} s") from None
            except httpx.TransportError as e:
                if last:
                    raise EndpointError(f"cannot reach {self.url}: {e}") from None
            else:
                if response.status_code == 200:
                    return self._content(response)
                if response.status_code not in RETRY_STATUS or last:
                    raise EndpointError(
                        f"{self.url} answered {response.status_code}: {_explain(response)}", response.status_code
                    )
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _content(self, response: httpx.Response) -> str:
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.url} sent a reply that is not a chat completion: {response.text[:200]!r}") from None
        return content or ""

    def close(self) -> None:
        self.http.close()
