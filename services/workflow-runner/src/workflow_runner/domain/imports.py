"""Bulk import of contacts: parse CSV or JSON rows, validate every row, report every problem.

Rows are numbered from 1 (the first data row; a CSV header is row 0). A row with any problem is
not imported; the others are. CSV columns are the contact fields (``name``, ``first_name``,
``last_name``, ``phone``, ``email``, ``timezone``, ``owner_user_id``, ``external_id``, ``tags``
separated by ``;``, ``opted_out_sms``, ``opted_out_call``, ``dnd_sms``, ``dnd_call`` as
true/false/yes/no/1/0, and ``custom.<key>`` for custom fields); JSON rows use the API's contact
fields. ``fields_present`` says which contact fields the input sets at all: when a row updates an
existing contact (same ``external_id``) only those fields are replaced.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workflow_runner.domain.errors import InvalidField, InvalidFields, Problem
from workflow_runner.domain.people import Contact

MAX_ROWS = 100_000
MAX_LISTED_ERRORS = 1_000
CSV_FLAGS = {
    "opted_out_sms": ("opted_out", "sms"),
    "opted_out_call": ("opted_out", "call"),
    "dnd_sms": ("do_not_disturb", "sms"),
    "dnd_call": ("do_not_disturb", "call"),
}
CSV_COLUMNS = frozenset(
    {"name", "first_name", "last_name", "phone", "email", "timezone", "owner_user_id", "external_id", "tags"}
    | set(CSV_FLAGS)
)
JSON_FIELDS = frozenset(
    {
        "name",
        "first_name",
        "last_name",
        "phone",
        "email",
        "timezone",
        "owner_user_id",
        "external_id",
        "tags",
        "custom_fields",
        "opted_out",
        "do_not_disturb",
    }
)
TRUE = frozenset({"true", "yes", "1", "y", "t"})
FALSE = frozenset({"false", "no", "0", "n", "f", ""})


@dataclass(frozen=True)
class RowError:
    row: int
    field: str
    message: str


@dataclass
class ParsedImport:
    """Valid contacts (with their row numbers), every row problem, and the fields the input sets."""

    contacts: list[tuple[int, Contact]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    fields_present: set[str] = field(default_factory=set)
    rows: int = 0

    @property
    def failed_rows(self) -> int:
        return len({e.row for e in self.errors})


class TooManyRows(InvalidField):
    def __init__(self, count: int) -> None:
        super().__init__("body", f"at most {MAX_ROWS} rows per import, got {count}")


def rows_from_csv(text: str) -> tuple[list[dict[str, Any]], set[str]]:
    """Rows as JSON-like objects (the shape JSON imports use) and the fields the header sets.
    Raises InvalidField("body", ...) for an unusable header."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], set()
    unknown = [h for h in header if h not in CSV_COLUMNS and not h.startswith("custom.")]
    if unknown:
        raise InvalidField("body", f"unknown CSV column(s) {unknown[:5]}; see the import documentation")
    if len(set(header)) != len(header):
        raise InvalidField("body", "a CSV column appears twice")
    present = {h for h in header if h in JSON_FIELDS}
    present |= {CSV_FLAGS[h][0] for h in header if h in CSV_FLAGS}
    if any(h.startswith("custom.") for h in header):
        present.add("custom_fields")
    rows: list[dict[str, Any]] = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue  # blank line
        if len(rows) >= MAX_ROWS:
            raise TooManyRows(len(rows) + 1 + sum(1 for _ in reader))
        row: dict[str, Any] = {}
        if len(values) != len(header):
            row["__error__"] = f"has {len(values)} values for {len(header)} columns"
        for name, raw in zip(header, values, strict=False):
            value = raw.strip()
            if name.startswith("custom."):
                row.setdefault("custom_fields", {})[name.removeprefix("custom.")] = value or None
            elif name in CSV_FLAGS:
                group, channel = CSV_FLAGS[name]
                row.setdefault(group, {})[channel] = value
            elif name == "tags":
                row["tags"] = [t for t in (p.strip() for p in value.split(";")) if t]
            else:
                row[name] = value or None
        rows.append(row)
    return rows, present


def rows_from_json(document: Any) -> tuple[list[dict[str, Any]], set[str]]:
    if not isinstance(document, list):
        raise InvalidField("body", "must be a JSON list of contact objects")
    if len(document) > MAX_ROWS:
        raise TooManyRows(len(document))
    present: set[str] = set()
    for row in document:
        if isinstance(row, Mapping):
            present |= set(row) & JSON_FIELDS
    return list(document), present


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    raise InvalidField(where, "must be true or false")


def _flags(value: Any, where: str) -> dict[str, bool] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidField(where, 'must be an object like {"sms": true}')
    return {k: _flag(v, f"{where}.{k}") if k in ("sms", "call") else v for k, v in value.items()}


def _uuid(value: Any, where: str) -> uuid.UUID | None:
    if value is None or value == "":
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise InvalidField(where, "is not a user id") from exc


def validate_rows(
    tenant: str, rows: Sequence[Any], fields_present: Iterable[str], *, now: datetime, first_row: int = 1
) -> ParsedImport:
    """Validate each row as a new contact; problems are collected per row and field. Rows are
    numbered from ``first_row`` (validating a slice of a larger import).

    Rows repeating an ``external_id`` of an earlier row are refused (the earlier one wins), so
    one import never writes the same contact twice.
    """
    result = ParsedImport(fields_present=set(fields_present), rows=len(rows))
    for number, row in enumerate(rows, start=first_row):
        if not isinstance(row, Mapping):
            result.errors.append(RowError(number, "row", "must be an object"))
            continue
        if "__error__" in row:
            result.errors.append(RowError(number, "row", str(row["__error__"])))
            continue
        unknown = set(row) - JSON_FIELDS
        if unknown:
            result.errors.append(RowError(number, sorted(unknown)[0], "unknown field"))
            continue
        problems: list[Problem] = []
        try:
            opted_out = _flags(row.get("opted_out"), "opted_out")
            dnd = _flags(row.get("do_not_disturb"), "do_not_disturb")
            owner = _uuid(row.get("owner_user_id"), "owner_user_id")
            text_fields = {
                key: row.get(key)
                for key in ("name", "first_name", "last_name", "phone", "email", "timezone", "external_id")
            }
            for key, value in text_fields.items():
                if value is not None and not isinstance(value, str):
                    raise InvalidField(key, "must be a string")
            contact = Contact.create(
                tenant=tenant,
                now=now,
                owner_user_id=owner,
                tags=row.get("tags") or [],
                custom_fields=row.get("custom_fields") or {},
                opted_out=opted_out,
                do_not_disturb=dnd,
                **text_fields,
            )
        except InvalidFields as exc:
            problems.extend(exc.problems)
        except InvalidField as exc:
            problems.append(Problem(exc.field, exc.message))
        if problems:
            result.errors.extend(RowError(number, p.field, p.message) for p in problems)
            continue
        result.contacts.append((number, contact))
    reject_repeated_external_ids(result)
    return result


def merge(parts: Sequence[ParsedImport]) -> ParsedImport:
    """One result from the results of consecutive slices (rows stay in order)."""
    merged = ParsedImport(fields_present=set(parts[0].fields_present) if parts else set())
    for part in parts:
        merged.contacts.extend(part.contacts)
        merged.errors.extend(part.errors)
        merged.rows += part.rows
    reject_repeated_external_ids(merged)
    return merged


def reject_repeated_external_ids(parsed: ParsedImport) -> None:
    """Keep the first row of each ``external_id``; later rows become errors."""
    seen: dict[str, int] = {}
    kept: list[tuple[int, Contact]] = []
    for number, contact in parsed.contacts:
        if contact.external_id is not None:
            earlier = seen.get(contact.external_id)
            if earlier is not None:
                parsed.errors.append(
                    RowError(number, "external_id", f"repeats the external_id of row {earlier}")
                )
                continue
            seen[contact.external_id] = number
        kept.append((number, contact))
    parsed.contacts = kept
    parsed.errors.sort(key=lambda e: e.row)


def reject_unknown_owners(parsed: ParsedImport, known_user_ids: Iterable[uuid.UUID]) -> None:
    """Move rows whose owner is not a user of the tenant from ``contacts`` to ``errors``."""
    known = set(known_user_ids)
    kept: list[tuple[int, Contact]] = []
    for number, contact in parsed.contacts:
        if contact.owner_user_id is not None and contact.owner_user_id not in known:
            parsed.errors.append(
                RowError(number, "owner_user_id", f"user {contact.owner_user_id} does not exist")
            )
        else:
            kept.append((number, contact))
    parsed.contacts = kept
    parsed.errors.sort(key=lambda e: e.row)
