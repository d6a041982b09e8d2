"""The topic and schema registry: what each topic carries, how it is keyed, who uses it.

Files (package data, read through ``importlib.resources`` so they work from a wheel too):

* ``topics/<short-name>.yaml``: one per topic in ``topics.py``.
* ``schemas/<Type>/v<N>.json``: JSON Schema (draft 2020-12) of the full envelope of one payload
  version, generated from the pydantic models by ``python -m manual_actions.contracts.generate``.
* ``examples/<Type>/v<N>/*.json``: example envelopes, validated by the tests.

The models in ``messages.py`` are the source of truth; the schemas are their checked-in image,
for consumers that do not use Python and for the end-to-end check that every produced event
validates (``validate_envelope``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from types import MappingProxyType
from typing import Any

import yaml
from jsonschema import Draft202012Validator, FormatChecker

PACKAGE = "manual_actions.contracts"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: ``value_format`` of topics whose values are envelopes (decode with ``codec.decode``).
ENVELOPE = "envelope"
#: ``value_format`` of the dead-letter topic: the failed message's bytes, unchanged.
ORIGINAL_BYTES = "original-bytes"

_TOPIC_FIELDS = {
    "topic",
    "description",
    "key",
    "partitions",
    "cleanup_policy",
    "retention_ms",
    "value_format",
    "producers",
    "consumers",
    "headers",
    "messages",
}


class RegistryError(Exception):
    """A registry file is missing or malformed (a bug in the checked-in contracts)."""


@dataclass(frozen=True)
class TopicKey:
    """What the Kafka key of a topic's messages is.

    ``payload_field``: the key (and the envelope ``subject``) equals ``data.<payload_field>``
    of every message; None where the key is copied from another message (dead letters).
    """

    description: str
    payload_field: str | None


@dataclass(frozen=True)
class Topic:
    """One topic of the registry. ``name`` is the full Kafka topic name (see ``topics.py``)."""

    name: str
    description: str
    key: TopicKey
    partitions: int
    cleanup_policy: str
    retention_ms: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    messages: tuple[tuple[str, int], ...]
    value_format: str = ENVELOPE
    #: producing service -> the message types it writes to this topic
    produced_by: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    #: Kafka header name -> meaning
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: file name without ``.yaml`` (the topic name without the ``manual-actions.`` prefix)
    short_name: str = ""

    def kafka_config(self) -> dict[str, str]:
        """Topic-level configs for topic creation (``NewTopic(topic_configs=...)``)."""
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


# --- loading --------------------------------------------------------------------------------


def _files() -> Traversable:
    return resources.files(PACKAGE)


def _require(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise RegistryError(f"{where}: {what}")


def _parse_topic(short_name: str, raw: Any) -> Topic:
    where = f"topics/{short_name}.yaml"
    _require(isinstance(raw, dict), where, "must be a mapping")
    unknown = set(raw) - _TOPIC_FIELDS
    missing = _TOPIC_FIELDS - set(raw)
    _require(not unknown, where, f"unknown field(s) {sorted(unknown)}")
    _require(not missing, where, f"missing field(s) {sorted(missing)}")
    key = raw["key"]
    _require(
        isinstance(key, dict) and set(key) == {"payload_field", "description"},
        where,
        "key needs exactly payload_field and description",
    )
    _require(isinstance(raw["partitions"], int) and raw["partitions"] > 0, where, "partitions must be > 0")
    _require(raw["cleanup_policy"] in ("delete", "compact", "compact,delete"), where, "bad cleanup_policy")
    _require(
        isinstance(raw["retention_ms"], int) and raw["retention_ms"] > 0, where, "retention_ms must be > 0"
    )
    _require(raw["value_format"] in (ENVELOPE, ORIGINAL_BYTES), where, "bad value_format")
    producers = raw["producers"]
    _require(isinstance(producers, dict), where, "producers must map service -> message types")
    _require(isinstance(raw["consumers"], list), where, "consumers must be a list")
    _require(isinstance(raw["headers"], dict), where, "headers must map name -> meaning")
    messages: list[tuple[str, int]] = []
    for entry in raw["messages"] or []:
        _require(
            isinstance(entry, dict) and set(entry) == {"type", "version"},
            where,
            f"message entries need exactly type and version: {entry!r}",
        )
        _require(
            isinstance(entry["version"], int) and entry["version"] >= 1, where, f"bad version in {entry!r}"
        )
        messages.append((str(entry["type"]), entry["version"]))
    _require(len(set(messages)) == len(messages), where, "a message is listed twice")
    return Topic(
        name=str(raw["topic"]),
        description=str(raw["description"]).strip(),
        key=TopicKey(description=str(key["description"]).strip(), payload_field=key["payload_field"]),
        partitions=raw["partitions"],
        cleanup_policy=raw["cleanup_policy"],
        retention_ms=raw["retention_ms"],
        producers=tuple(producers),
        consumers=tuple(raw["consumers"]),
        messages=tuple(messages),
        value_format=raw["value_format"],
        produced_by=MappingProxyType({s: tuple(types or ()) for s, types in producers.items()}),
        headers=MappingProxyType({str(k): str(v) for k, v in raw["headers"].items()}),
        short_name=short_name,
    )


@cache
def _topics_by_name() -> Mapping[str, Topic]:
    loaded: dict[str, Topic] = {}
    for entry in sorted(_files().joinpath("topics").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        parsed = _parse_topic(entry.name.removesuffix(".yaml"), yaml.safe_load(entry.read_text("utf-8")))
        if parsed.name in loaded:
            raise RegistryError(f"topic {parsed.name} is described twice")
        loaded[parsed.name] = parsed
    return MappingProxyType(loaded)


def topics() -> list[Topic]:
    """Every topic of the registry, sorted by name."""
    return [t for _, t in sorted(_topics_by_name().items())]


def topic(name: str) -> Topic:
    """The topic with this full name (``manual-actions.action-lifecycle``); KeyError if none."""
    try:
        return _topics_by_name()[name]
    except KeyError:
        raise KeyError(f"no topic {name!r} in the registry") from None


def topic_for_message(message_type: str) -> list[str]:
    """Names of the topics that carry any version of ``message_type`` (sorted)."""
    return sorted(t.name for t in _topics_by_name().values() if any(m == message_type for m, _ in t.messages))


def message_types() -> list[tuple[str, int]]:
    """Every (type, version) some topic carries, sorted."""
    return sorted({m for t in _topics_by_name().values() for m in t.messages})


# --- schemas and examples -------------------------------------------------------------------


def schema_path(message_type: str, version: int) -> str:
    """Path of a schema inside the package, e.g. ``schemas/SendSms/v1.json``."""
    return f"schemas/{message_type}/v{version}.json"


def examples_path(message_type: str, version: int) -> str:
    """Folder of a payload version's examples inside the package, e.g. ``examples/SendSms/v1``."""
    return f"examples/{message_type}/v{version}"


@cache
def _schema(message_type: str, version: int) -> Mapping[str, Any]:
    resource = _files().joinpath(schema_path(message_type, version))
    if not resource.is_file():
        raise KeyError(f"no schema for {message_type} v{version}")
    loaded: dict[str, Any] = json.loads(resource.read_text("utf-8"))
    return loaded


def schema_for(message_type: str, version: int) -> dict[str, Any]:
    """The JSON Schema of the full envelope of ``message_type`` v``version`` (a fresh copy)."""
    return copy.deepcopy(dict(_schema(message_type, version)))


def examples_for(message_type: str, version: int) -> dict[str, dict[str, Any]]:
    """Example envelopes of one payload version: file stem -> document (empty if none)."""
    folder = _files().joinpath(examples_path(message_type, version))
    if not folder.is_dir():
        return {}
    found: dict[str, dict[str, Any]] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            found[entry.name.removesuffix(".json")] = json.loads(entry.read_text("utf-8"))
    return found


# --- validation -----------------------------------------------------------------------------

# jsonschema checks "date-time" only when the optional rfc3339-validator is installed; we do not
# depend on it, so the format is checked here (RFC 3339: a date, a time and an offset).
FORMAT_CHECKER: FormatChecker = copy.deepcopy(Draft202012Validator.FORMAT_CHECKER)
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

if "date-time" not in FORMAT_CHECKER.checkers:

    @FORMAT_CHECKER.checks("date-time", raises=ValueError)
    def _is_rfc3339_date_time(instance: object) -> bool:
        if not isinstance(instance, str):
            return True  # formats only constrain strings
        if not _RFC3339.match(instance):
            return False
        datetime.fromisoformat(instance.upper().replace("Z", "+00:00"))  # raises on 2025-02-30
        return True


@cache
def _validator(message_type: str, version: int) -> Draft202012Validator:
    return Draft202012Validator(dict(_schema(message_type, version)), format_checker=FORMAT_CHECKER)


def validate_envelope(document: Any, topic_name: str | None = None) -> list[str]:
    """Check one envelope (parsed JSON) against the registry; return the errors, [] when valid.

    Checks the JSON Schema of its (type, version), that its ``subject`` equals the payload field
    the Kafka key comes from, and, when ``topic_name`` is given, that the topic carries this
    (type, version). Each error starts with the path of the field it is about.
    """
    if not isinstance(document, dict):
        return ["(envelope): must be a JSON object"]
    message_type, version = document.get("type"), document.get("version")
    if not isinstance(message_type, str) or not isinstance(version, int) or isinstance(version, bool):
        return [f"type: no schema for type {message_type!r} version {version!r}"]
    try:
        validator = _validator(message_type, version)
    except KeyError:
        return [f"type: unknown message type/version {message_type!r} v{version}"]
    errors = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(envelope)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    ]
    carriers = [t for t in _topics_by_name().values() if (message_type, version) in t.messages]
    if topic_name is not None:
        if topic_name not in _topics_by_name():
            errors.append(f"(topic): no topic {topic_name!r} in the registry")
        elif (message_type, version) not in _topics_by_name()[topic_name].messages:
            errors.append(f"type: {message_type} v{version} is not carried by {topic_name}")
        carriers = [t for t in carriers if t.name == topic_name]
    data = document.get("data")
    for key_field in sorted({t.key.payload_field for t in carriers if t.key.payload_field}):
        if isinstance(data, dict) and key_field in data and document.get("subject") != str(data[key_field]):
            errors.append(
                f"subject: must equal data.{key_field} ({data[key_field]!r}), the Kafka key, "
                f"got {document.get('subject')!r}"
            )
    return errors
