"""Users, contacts and phone numbers: validation and normalisation."""

from __future__ import annotations

import pytest
from wr_factories import T0, contact

from workflow_runner.domain.errors import InvalidField
from workflow_runner.domain.people import Contact, User, UserRole
from workflow_runner.domain.phone import normalise_phone


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+14155552671", "+14155552671"),
        (" +1 (415) 555-2671 ", "+14155552671"),
        ("+33 6 12 34 56 78", "+33612345678"),
    ],
)
def test_phone_numbers_are_normalised_to_e164(raw: str, expected: str) -> None:
    assert normalise_phone(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "4155552671", "+1415", "+1 555 555 0100", "not a number", "+" + "1" * 40]
)
def test_invalid_phone_numbers_name_the_field(raw: str) -> None:
    with pytest.raises(InvalidField) as caught:
        normalise_phone(raw, field="agent_phone")
    assert caught.value.field == "agent_phone"


def test_user_is_validated() -> None:
    with pytest.raises(InvalidField) as caught:
        User.create(tenant="t", name="Ada", phone="12", role=UserRole.AGENT, now=T0)
    assert caught.value.field == "phone"
    with pytest.raises(InvalidField) as caught:
        User.create(tenant="t", name="Ada", phone="+14155552671", role="owner", now=T0)
    assert caught.value.field == "role"
    with pytest.raises(InvalidField) as caught:
        User.create(tenant="t", name="  ", phone="+14155552671", role="agent", now=T0)
    assert caught.value.field == "name"


def test_contact_first_and_last_name_are_derived_from_the_name() -> None:
    c = contact(name="  Grace   Brewster Hopper ")
    assert (c.name, c.first_name, c.last_name) == ("Grace Brewster Hopper", "Grace", "Brewster Hopper")
    single = contact(name="Cher")
    assert (single.first_name, single.last_name) == ("Cher", "")


def test_contact_name_can_come_from_first_and_last_name() -> None:
    c = Contact.create(tenant="t", now=T0, name=None, first_name="Alan", last_name="Turing")
    assert (c.name, c.first_name, c.last_name) == ("Alan Turing", "Alan", "Turing")
    with pytest.raises(InvalidField) as caught:
        Contact.create(tenant="t", now=T0, name=None)
    assert caught.value.field == "name"


def test_contact_without_phone_is_allowed_but_a_bad_phone_is_not() -> None:
    assert contact(phone=None).phone is None
    with pytest.raises(InvalidField) as caught:
        contact(phone="+1 555")
    assert caught.value.field == "phone"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"email": "not-an-email"}, "email"),
        ({"custom_fields": {"1st": "x"}}, "custom_fields.1st"),
        ({"custom_fields": {"plan": ["a", "list"]}}, "custom_fields.plan"),
    ],
)
def test_contact_fields_are_validated(extra: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        contact(**extra)
    assert caught.value.field == field


def test_contact_keeps_valid_optional_fields() -> None:
    c = contact(
        email=" grace@example.com ", timezone="America/New_York", custom_fields={"plan": "gold", "seats": 3}
    )
    assert (c.email, c.timezone, c.custom_fields) == (
        "grace@example.com",
        "America/New_York",
        {"plan": "gold", "seats": 3},
    )
