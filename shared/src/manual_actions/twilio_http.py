"""Point the official Twilio SDK at another API base URL (the local Twilio contract mock).

The SDK builds absolute ``https://api.twilio.com/...`` URLs itself; its only supported seam is the
``http_client`` argument of ``twilio.rest.Client``. These clients rewrite the origin of every
request and change nothing else, so the SDK's own encoding, authentication and error handling are
what the mock sees and validates.

Usage::

    client = Client(account_sid, auth_token, http_client=twilio_http_client(settings.twilio_api_base_url))

An empty or ``None`` base URL returns ``None``, which makes the SDK use its default client and so
talk to the real Twilio (``TWILIO_API_BASE_URL`` empty means the real Twilio).

This module needs the ``twilio`` package, which every Twilio-facing service depends on.
"""

from __future__ import annotations

from typing import Any

from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response

TWILIO_API_ORIGIN = "https://api.twilio.com"


def rewrite_twilio_url(url: str, base_url: str) -> str:
    """Replace the ``https://api.twilio.com`` origin of ``url`` with ``base_url``.

    URLs of other Twilio hosts (``https://messaging.twilio.com`` etc.) are returned unchanged: the
    mock serves the 2010-04-01 API only, and silently sending those to it would hide the mistake.
    """
    if url.startswith(TWILIO_API_ORIGIN + "/") or url == TWILIO_API_ORIGIN:
        return base_url.rstrip("/") + url[len(TWILIO_API_ORIGIN) :]
    return url


class RewritingTwilioHttpClient(TwilioHttpClient):
    """Synchronous SDK HTTP client that sends ``api.twilio.com`` requests to ``base_url``."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url.rstrip("/")

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        return super().request(
            method,
            rewrite_twilio_url(url, self.base_url),
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )


class RewritingAsyncTwilioHttpClient(AsyncTwilioHttpClient):
    """Asynchronous (aiohttp) SDK HTTP client that sends ``api.twilio.com`` requests to ``base_url``.

    Use with ``Client(..., http_client=...)`` and the SDK's ``*_async`` methods; close it with
    ``await client.close()`` when done.
    """

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url.rstrip("/")

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the SDK's own signature
        allow_redirects: bool = False,
    ) -> Response:
        return await super().request(
            method,
            rewrite_twilio_url(url, self.base_url),
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )


def twilio_http_client(base_url: str | None, *, timeout: float | None = 10.0) -> TwilioHttpClient | None:
    """The synchronous SDK HTTP client for ``base_url``; ``None`` (real Twilio) when it is empty."""
    if not base_url:
        return None
    return RewritingTwilioHttpClient(base_url, timeout=timeout)


def async_twilio_http_client(base_url: str | None, *, timeout: float | None = 10.0) -> AsyncTwilioHttpClient:
    """The asynchronous SDK HTTP client for ``base_url``; a plain one (real Twilio) when it is empty.

    Create it inside a running event loop (aiohttp binds its session to the loop).
    """
    if not base_url:
        return AsyncTwilioHttpClient(timeout=timeout)
    return RewritingAsyncTwilioHttpClient(base_url, timeout=timeout)
