"""A cheaper validator for envelopes at their type's latest version, derived from the contract.

``codec.decode`` is the reference: what it accepts is valid, and its ``InvalidMessage`` reasons are
what dead letters carry. This module only makes the common case cheaper for a consumer that knows
a message's type and version from its Kafka headers (``Envelope.kafka_headers``).

For each latest payload class of ``codec.PAYLOADS`` it takes pydantic's own compiled schema of
``Envelope[<payload>]`` (``__pydantic_core_schema__``: every field's type, constraint and default,
the nested payload models, exactly as the models define them) and changes three things before
compiling it again with pydantic-core:

* The envelope's Python ``model_validator`` (``type``/``version`` must name the payload) is
  replaced by the same check inside the schema: ``type`` must be the payload's type name, and
  ``version`` a JSON integer equal to its version (strict: the codec refuses ``2.0`` or ``"2"``
  before it validates anything). The Python call per message, and what it costs pydantic-core to
  call back into Python, go away.
* The wire-required fields (``WIRE_REQUIRED_FIELDS``: ``id`` and ``time``, which have a Python
  default for ``Envelope.wrap``) are required, as ``codec.decode`` requires them.
* Nothing else: the result is an instance of the same ``Envelope[<payload>]`` class holding the
  same payload objects, with the same ``model_fields_set``, built by pydantic-core's JSON parser
  in one step (no ``json.loads`` into Python objects first).

Contract of ``fast_decode(raw, message_type, version)``: it returns either None ("not decided
here": the caller must use ``codec.decode``) or exactly the envelope ``codec.decode(raw)`` would
return. It never accepts a document the codec refuses; a refused document always goes through the
codec, so dead-letter reasons stay the codec's. A model the derivation does not recognise (another
envelope validator, another shape of schema) gets no fast validator: its messages take the codec's
path. ``tests/test_contracts_fast.py`` checks, for every message type and version of the registry,
its examples and systematically broken variants, that this module and ``codec.decode`` agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from pydantic import BaseModel, ValidationError
from pydantic_core import CoreSchema, SchemaValidator
from pydantic_core import core_schema as cs

from manual_actions.contracts.codec import PAYLOADS
from manual_actions.contracts.envelope import WIRE_REQUIRED_FIELDS, Envelope, Payload

__all__ = ["FAST_VALIDATORS", "Unsupported", "derive_validator", "fast_decode"]

# The one envelope validator the derivation expresses in the schema (see the module docstring).
_ENVELOPE_VALIDATOR = "_type_and_version_name_the_payload"


class Unsupported(Exception):
    """The derivation cannot express an envelope class exactly; its messages take the codec's path."""


def _envelope_validator_function() -> Any:
    decorators = cast(Any, Envelope).__pydantic_decorators__.model_validators
    if set(decorators) != {_ENVELOPE_VALIDATOR}:
        raise Unsupported(f"Envelope's model validators are {sorted(decorators)}, not {_ENVELOPE_VALIDATOR}")
    return decorators[_ENVELOPE_VALIDATOR].func


def derive_schema(payload: type[Payload]) -> CoreSchema:
    """``Envelope[payload]``'s core schema, changed as the module docstring says (or ``Unsupported``)."""
    envelope_class: type[BaseModel] = cast(Any, Envelope)[payload]
    expected_function = _envelope_validator_function()
    schema: dict[str, Any] = dict(envelope_class.__pydantic_core_schema__)
    definitions = None
    if schema["type"] == "definitions":
        # Models used more than once (e.g. ChannelFlags) are definitions referenced from the schema.
        definitions, schema = schema["definitions"], dict(schema["schema"])
    if schema["type"] != "function-after" or schema["function"].get("function") is not expected_function:
        raise Unsupported(f"{envelope_class.__name__}: expected the envelope's after-validator outermost")
    model = dict(schema["schema"])
    if model["type"] != "model" or model["cls"] is not envelope_class:
        raise Unsupported(f"{envelope_class.__name__}: expected the model schema inside the validator")
    fields_schema = dict(model["schema"])
    fields = dict(fields_schema["fields"])
    for name, expected in (("type", "str"), ("version", "int")):
        inner = fields.get(name, {}).get("schema", {})
        if inner.get("type") != expected or set(inner) - {"type", "ge", "metadata"}:
            raise Unsupported(f"{envelope_class.__name__}.{name}: unexpected schema {inner!r}")
        if name == "version" and inner.get("ge", 1) > payload.message_version:
            raise Unsupported(f"{envelope_class.__name__}.version: its own bound refuses the version")
    fields["type"] = cs.model_field(cs.literal_schema([payload.message_type]))
    fields["version"] = cs.model_field(
        cs.int_schema(strict=True, ge=payload.message_version, le=payload.message_version))
    for name in WIRE_REQUIRED_FIELDS:
        field = dict(fields[name])
        if field["schema"]["type"] == "default":
            field["schema"] = field["schema"]["schema"]
        fields[name] = field
    fields_schema["fields"] = fields
    model["schema"] = fields_schema
    if definitions is not None:
        return cs.definitions_schema(cast(CoreSchema, model), definitions)
    return cast(CoreSchema, model)


def derive_validator(payload: type[Payload]) -> Callable[[bytes], Envelope[Any]]:
    """The derived validator's ``validate_json``: raises pydantic's ``ValidationError`` where it refuses."""
    return cast(Callable[[bytes], "Envelope[Any]"], SchemaValidator(derive_schema(payload)).validate_json)


def _latest() -> dict[tuple[bytes, bytes], Callable[[bytes], Envelope[Any]]]:
    latest: dict[str, int] = {}
    for message_type, version in PAYLOADS:
        latest[message_type] = max(version, latest.get(message_type, version))
    validators: dict[tuple[bytes, bytes], Callable[[bytes], Envelope[Any]]] = {}
    for message_type, version in latest.items():
        try:
            validators[(message_type.encode(), str(version).encode())] = derive_validator(
                PAYLOADS[(message_type, version)])
        except Unsupported:
            continue
    return validators


#: The derived validators by the ``type``/``version`` header bytes as they are on the wire
#: (``Envelope.kafka_headers``), for the latest version of each message type: a lookup needs no
#: header decoded. Only a latest version can skip the codec's upcaster chain.
FAST_VALIDATORS: dict[tuple[bytes, bytes], Callable[[bytes], Envelope[Any]]] = _latest()


def fast_decode(raw: bytes, message_type: bytes, version: bytes) -> Envelope[Any] | None:
    """``codec.decode(raw)`` for a message whose headers name ``message_type``/``version``, or None.

    None means "use ``codec.decode``": the pair is not a latest version with a derived validator,
    or the document is not one it accepts (invalid, or another type or version than the headers
    say).
    """
    validate = FAST_VALIDATORS.get((message_type, version))
    if validate is None:
        return None
    try:
        return validate(raw)
    except ValidationError:
        return None
