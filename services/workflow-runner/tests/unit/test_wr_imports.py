"""Bulk import rules: CSV and JSON rows, per-row errors, duplicates, the fields an import sets."""

from __future__ import annotations

import uuid

import pytest
from wr_factories import T0, TENANT, contact
from wr_fakes import FakeUnitOfWork

from manual_actions.contracts import registry, topics
from workflow_runner.domain.directory import ChannelFlags
from workflow_runner.domain.errors import InvalidField
from workflow_runner.domain.imports import MAX_ROWS, rows_from_csv, rows_from_json, validate_rows
from workflow_runner.handlers import handlers
from workflow_runner.handlers.directory import contact_updated, contact_updated_documents

CSV = (
    "external_id,name,phone,email,timezone,tags,opted_out_sms,dnd_call,custom.plan\n"
    "crm-1,Ada Lovelace,+1 415 555 0101,ada@example.com,Europe/London,vip; hot,yes,0,gold\n"
    "crm-2,,+1 555,not-an-email,Mars/Base,,maybe,,\n"
    "\n"
    "crm-1,Ada Again,+14155550102,,,,,,\n"
    "crm-3,Too,Many,Values,,,,,,,\n"
)


def test_csv_rows_are_validated_row_by_row_naming_each_field() -> None:
    rows, present = rows_from_csv(CSV)
    assert present == {
        "external_id",
        "name",
        "phone",
        "email",
        "timezone",
        "tags",
        "opted_out",
        "do_not_disturb",
        "custom_fields",
    }
    parsed = validate_rows(TENANT, rows, present, now=T0)
    [(number, ada)] = parsed.contacts
    assert number == 1 and ada.phone == "+14155550101" and ada.tags == ["vip", "hot"]
    assert ada.opted_out == ChannelFlags(sms=True) and ada.do_not_disturb == ChannelFlags()
    assert ada.custom_fields == {"plan": "gold"} and ada.timezone == "Europe/London"
    assert [(e.row, e.field) for e in parsed.errors] == [
        (2, "opted_out.sms"),
        (3, "external_id"),
        (4, "row"),
    ]
    assert parsed.failed_rows == 3 and parsed.rows == 4


def test_a_row_reports_all_of_its_invalid_fields() -> None:
    rows, present = rows_from_csv("name,phone,email,timezone\n,+1 555,nope,Mars/Base\n")
    parsed = validate_rows(TENANT, rows, present, now=T0)
    assert [(e.row, e.field) for e in parsed.errors] == [
        (1, "name"),
        (1, "phone"),
        (1, "email"),
        (1, "timezone"),
    ]


def test_unknown_csv_columns_and_oversized_json_are_refused_whole() -> None:
    with pytest.raises(InvalidField) as caught:
        rows_from_csv("name,favourite_colour\nAda,blue\n")
    assert caught.value.field == "body" and "favourite_colour" in caught.value.message
    with pytest.raises(InvalidField):
        rows_from_json({"name": "not a list"})
    with pytest.raises(InvalidField):
        rows_from_json([{}] * (MAX_ROWS + 1))


async def test_import_upserts_by_external_id_and_publishes_each_stored_contact() -> None:
    uow = FakeUnitOfWork()
    rows = [
        {"external_id": "a", "name": "Ada", "phone": "+14155550101"},
        {"name": "No Id", "owner_user_id": str(uuid.uuid4())},
        {"external_id": "b", "name": "Bo", "tags": ["x"]},
    ]
    first = await handlers.import_contacts(
        uow, TENANT, rows, {"external_id", "name", "phone", "tags", "owner_user_id"}
    )
    assert (first.imported, first.inserted, first.updated, first.failed) == (2, 2, 0, 1)
    assert [(e.row, e.field) for e in first.errors] == [(2, "owner_user_id")]
    again = await handlers.import_contacts(
        uow, TENANT, [rows[0] | {"name": "Ada L"}], {"external_id", "name"}
    )
    assert (again.imported, again.inserted, again.updated) == (1, 0, 1)
    events = [e for _, e in uow.published_on(topics.CONTACTS)]
    assert [(e.data.name, e.sequence) for e in events] == [("Ada", 1), ("Bo", 1), ("Ada L", 2)]
    assert events[2].subject == events[0].subject


def test_bulk_event_documents_equal_the_pydantic_envelopes() -> None:
    owner = uuid.uuid4()
    plain = contact()
    rich = contact(tags=["a", "b"], opted_out={"call": True}, owner_user_id=owner, timezone="Asia/Tokyo")
    rich.delete(T0)
    for c in (plain, rich):
        [document] = contact_updated_documents([c])
        expected = contact_updated(c).to_jsonable()
        assert document | {"id": expected["id"]} == expected
        assert registry.validate_envelope(document, topics.CONTACTS) == []
