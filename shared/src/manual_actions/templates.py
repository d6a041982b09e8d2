"""Merge-field templates for manual SMS: ``Hi {{contact.first_name}}, this is {{user.name}}``.

Shared by workflow-runner (validates templates when a workflow is published, renders the text
when it queues an action) and action-queue (renders the template again with the contact's current
data when a person opens the action). Values come in as plain mappings, so each service passes
whatever it stores.

A deliberately tiny language: ``{{ <field> }}`` where ``<field>`` is one of ``KNOWN_FIELDS`` or
``contact.custom.<key>``. There are no expressions, filters or attribute lookups, and rendering is
one pass of string substitution: a value is never parsed again, so a contact named
``{{user.name}}`` is printed literally and nothing a tenant types can execute code.
Unknown fields are rejected when the workflow is published (``parse_template`` reports them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Keys of contacts' custom fields (the same rule workflow-runner validates them with).
CUSTOM_FIELD_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

KNOWN_FIELDS: frozenset[str] = frozenset(
    {
        "contact.name",
        "contact.first_name",
        "contact.last_name",
        "contact.phone",
        "contact.email",
        "user.name",
        "user.first_name",
    }
)
CUSTOM_PREFIX = "contact.custom."

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_FIELD_SYNTAX = re.compile(r"^[A-Za-z0-9_.]+$")
_SHOWN = 60


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class MergeField:
    """A placeholder; ``name`` is the normalised field (whitespace inside braces removed)."""

    name: str


Segment = Text | MergeField


@dataclass(frozen=True)
class Template:
    """A parsed template: its segments and every problem found (empty when usable)."""

    source: str
    segments: tuple[Segment, ...]
    problems: tuple[str, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments if isinstance(s, MergeField))


class TemplateError(ValueError):
    """Rendering a template that has problems."""


def _shown(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def _field_problem(name: str) -> str | None:
    if not _FIELD_SYNTAX.match(name):
        return f"unknown merge field {{{{{_shown(name)}}}}}: only plain field names are allowed"
    if name in KNOWN_FIELDS:
        return None
    if name.startswith(CUSTOM_PREFIX):
        key = name[len(CUSTOM_PREFIX) :]
        if CUSTOM_FIELD_KEY.match(key):
            return None
        return f"invalid custom field key in {{{{{_shown(name)}}}}}"
    known = ", ".join(sorted(KNOWN_FIELDS)) + ", contact.custom.<key>"
    return f"unknown merge field {{{{{_shown(name)}}}}} (known: {known})"


def parse_template(source: str) -> Template:
    """Split ``source`` into text and merge fields, collecting every problem (unknown or malformed
    fields, an opening ``{{`` without its ``}}``) instead of stopping at the first."""
    segments: list[Segment] = []
    problems: list[str] = []
    position = 0

    def add_text(text: str) -> None:
        if "{{" in text:
            problems.append("'{{' without a matching '}}'")
        if text:
            segments.append(Text(text))

    for match in _PLACEHOLDER.finditer(source):
        add_text(source[position : match.start()])
        name = match.group(1).strip()
        problem = _field_problem(name)
        if problem:
            problems.append(problem)
        segments.append(MergeField(name))
        position = match.end()
    add_text(source[position:])
    return Template(source=source, segments=tuple(segments), problems=tuple(problems))


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def split_name(name: str) -> tuple[str, str]:
    """First and last name derived from a full name: the first word, and the rest ("" if none)."""
    first, _, rest = " ".join(name.split()).partition(" ")
    return first, rest


def merge_values(contact: Mapping[str, Any], user: Mapping[str, Any] | None) -> dict[str, str]:
    """The values available to templates for this contact and assignee (missing ones render as "").

    ``contact`` holds ``name`` and optionally ``first_name``, ``last_name`` (derived from ``name``
    when absent), ``phone``, ``email`` and ``custom_fields`` (key -> scalar); ``user`` holds
    ``name`` and optionally ``first_name``. Nothing else of either is read.
    """
    name = _text(contact.get("name"))
    first, last = split_name(name)
    values = {
        "contact.name": name,
        "contact.first_name": _text(contact.get("first_name")) or first,
        "contact.last_name": _text(contact.get("last_name")) or last,
        "contact.phone": _text(contact.get("phone")),
        "contact.email": _text(contact.get("email")),
        "user.name": _text(user.get("name")) if user else "",
        "user.first_name": (_text(user.get("first_name")) or split_name(_text(user.get("name")))[0])
        if user else "",
    }
    custom = contact.get("custom_fields") or {}
    for key, value in custom.items():
        values[CUSTOM_PREFIX + str(key)] = _text(value)
    return values


def render(template: Template, values: Mapping[str, str]) -> str:
    """Substitute each merge field with its value ("" when the contact lacks it, e.g. an unset
    custom field). Raises TemplateError for a template with problems; values are inserted
    verbatim and never re-scanned."""
    if template.problems:
        raise TemplateError("; ".join(template.problems))
    return "".join(
        segment.text if isinstance(segment, Text) else values.get(segment.name, "")
        for segment in template.segments
    )
