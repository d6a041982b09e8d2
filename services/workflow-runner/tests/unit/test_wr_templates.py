"""The merge-field renderer: substitution, unknown fields, and attempts to execute code."""

from __future__ import annotations

import pytest
from wr_factories import contact, user

from workflow_runner.domain.templates import TemplateError, merge_values, parse_template, render


def values(**contact_extra: object) -> dict[str, str]:
    return merge_values(contact(**contact_extra), user(name="Ada Lovelace"))  # type: ignore[arg-type]


def test_known_fields_are_substituted() -> None:
    template = parse_template(
        "Hi {{contact.first_name}} ({{ contact.name }}, {{contact.phone}}), plan {{contact.custom.plan}}."
        " — {{user.name}}"
    )
    assert template.problems == ()
    text = render(template, values(custom_fields={"plan": "gold"}))
    assert text == "Hi Grace (Grace Hopper, +14155550132), plan gold. — Ada Lovelace"


def test_missing_values_render_empty() -> None:
    template = parse_template("[{{contact.custom.plan}}][{{contact.phone}}][{{user.name}}]")
    assert render(template, merge_values(contact(phone=None), None)) == "[][][]"


def test_custom_scalar_values_render_as_text() -> None:
    template = parse_template("{{contact.custom.vip}} {{contact.custom.seats}}")
    assert render(template, values(custom_fields={"vip": True, "seats": 3})) == "true 3"


@pytest.mark.parametrize(
    "source",
    [
        "{{ __import__('os') }}",
        "{{ __import__('os').system('touch /tmp/pwned') }}",
        "{{ contact.__class__.__mro__ }}",
        "{{ 7*7 }}",
        "{{ contact.name | upper }}",
        "{{ user.password }}",
        "{{ config }}",
        "{{}}",
        "{{ contact.custom.a-b }}",
        "{{ {{contact.name}} }}",
    ],
)
def test_anything_but_plain_known_fields_is_a_problem(source: str) -> None:
    template = parse_template(f"Hello {source}")
    assert template.problems, source
    with pytest.raises(TemplateError):
        render(template, values())


def test_unclosed_placeholder_is_a_problem() -> None:
    assert parse_template("Hi {{contact.first_name").problems == ("'{{' without a matching '}}'",)


def test_every_problem_is_reported() -> None:
    template = parse_template("{{ nope }} and {{ __import__('os') }} and {{contact.name}} {{ also.bad")
    assert len(template.problems) == 3


def test_values_are_never_rendered_again() -> None:
    """A contact whose data looks like a template is printed as typed, not expanded or evaluated."""
    sneaky = contact(name="{{user.name}} {{ __import__('os') }}", custom_fields={"x": "{{contact.phone}}"})
    template = parse_template("Hi {{contact.name}} / {{contact.custom.x}}")
    text = render(template, merge_values(sneaky, user(name="Ada Lovelace")))
    assert text == "Hi {{user.name}} {{ __import__('os') }} / {{contact.phone}}"


def test_custom_keys_are_looked_up_not_evaluated() -> None:
    """Dunder-looking custom keys are just dictionary keys: no attribute access happens."""
    template = parse_template("[{{contact.custom.__class__}}]")
    assert template.problems == ()
    assert render(template, values()) == "[]"


def test_jinja_statements_are_plain_text() -> None:
    template = parse_template("{% for x in range(3) %}x{% endfor %}")
    assert template.problems == ()
    assert render(template, values()) == "{% for x in range(3) %}x{% endfor %}"
