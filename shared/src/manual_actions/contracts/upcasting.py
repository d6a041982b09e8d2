"""Upcasters: turn the payload of an old message version into the next version's payload.

A breaking change to a payload gets a new class with ``message_version`` + 1 (see
``messages.py``). Messages of the old version may still sit in a topic, or come from a producer
that has not been upgraded yet, so for every step ``v -> v + 1`` we register one small function::

    @upcaster("ActionQueued", from_version=1)
    def _action_queued_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "channel": "default"}

``codec.decode`` applies the chain ``v1 -> v2 -> ... -> latest`` before validating, so handlers
only ever see the latest payload class of a type. Upcasters get and return the plain JSON
``data`` object (never model instances: the old class may be gone), must not mutate their
input, and must be pure: the same old message always decodes to the same new one, which keeps
redelivery and replay deterministic. The envelope (id, subject, sequence, tenant...) is kept;
only ``version`` and ``data`` change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

JsonObject = dict[str, Any]
Upcaster = Callable[[JsonObject], JsonObject]

#: (message type, from_version) -> function producing the payload of ``from_version + 1``.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


class UpcastError(Exception):
    """An upcaster failed on a payload; ``codec.decode`` turns this into InvalidMessage."""


def upcaster(message_type: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register the decorated function as the upcaster ``message_type`` v``from_version`` -> +1.

    Registering a second function for the same step is a programming error (two different
    histories for one version) and raises ValueError.
    """
    if from_version < 1:
        raise ValueError(f"from_version must be >= 1, got {from_version}")

    def register(function: Upcaster) -> Upcaster:
        key = (message_type, from_version)
        if key in UPCASTERS and UPCASTERS[key] is not function:
            raise ValueError(f"an upcaster for {message_type} v{from_version} is already registered")
        UPCASTERS[key] = function
        return function

    return register


def remove_upcaster(message_type: str, *, from_version: int) -> None:
    """Unregister the upcaster of one step (tests that register their own use this to clean up)."""
    UPCASTERS.pop((message_type, from_version), None)


def upcast(message_type: str, version: int, data: JsonObject) -> tuple[int, JsonObject]:
    """Apply the registered chain from ``version`` as far as it goes; return (version, data).

    Stops at the first version without an upcaster, which is the latest one when the chain is
    complete. Raises UpcastError naming the failing step when an upcaster raises or does not
    return a JSON object.
    """
    while (step := UPCASTERS.get((message_type, version))) is not None:
        try:
            upcasted = step(data)
        except Exception as exc:
            raise UpcastError(
                f"upcasting {message_type} v{version} to v{version + 1} failed: {exc!r}"
            ) from exc
        if not isinstance(upcasted, dict):
            raise UpcastError(
                f"upcaster {message_type} v{version} returned {type(upcasted).__name__}, not an object"
            )
        data = upcasted
        version += 1
    return version, data
