"""The shared template engine with plain mappings (action-queue's side of it)."""

from __future__ import annotations

from manual_actions.templates import merge_values, parse_template, render


def test_mapping_values_derive_first_and_last_name_and_custom_fields() -> None:
    values = merge_values({"name": "Grace  Brewster Hopper", "phone": "+14155550132", "email": None,
                           "custom_fields": {"plan": "gold", "seats": 3, "vip": True}},
                          {"name": "Ada Lovelace"})
    template = parse_template("{{contact.first_name}}|{{contact.last_name}}|{{contact.email}}|"
                              "{{contact.custom.plan}} {{contact.custom.seats}} {{contact.custom.vip}}|"
                              "{{user.first_name}}")
    assert render(template, values) == "Grace|Brewster Hopper||gold 3 true|Ada"


def test_values_are_never_rendered_again() -> None:
    values = merge_values({"name": "{{user.name}} {{ __import__('os') }}"}, None)
    assert render(parse_template("Hi {{contact.name}} {{user.name}}"), values) == (
        "Hi {{user.name}} {{ __import__('os') }} ")
