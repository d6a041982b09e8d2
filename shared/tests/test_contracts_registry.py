"""The topic registry agrees with topics.py, the models, the architecture and the generated files."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from manual_actions.contracts import dead_letters, generate, registry, topics
from manual_actions.contracts.codec import PAYLOADS
from manual_actions.contracts.envelope import Envelope
from manual_actions.contracts.messages import ALL_MESSAGES

TOPIC_CONSTANTS = {value for name, value in vars(topics).items() if name.isupper() and isinstance(value, str)}

# Who writes and reads what, as docs/architecture.md describes it (plus the dashboard and
# workflow-runner on action-lifecycle). A change here is a change of the architecture.
# Every transition of an action after ActionQueued, published by action-queue (decision 0012).
AQ_TRANSITIONS = (
    "ActionReserved",
    "ActionReleased",
    "ActionSnoozed",
    "ActionScheduled",
    "ActionRequeued",
    "ActionRescheduled",
    "ActionSmsRequested",
    "ActionCallRequested",
    "ActionCallEnded",
    "ActionSkipped",
    "ActionReassigned",
    "ActionExpired",
    "ActionFailed",
)
EXPECTED_MESSAGES = {
    topics.ACTION_LIFECYCLE: {
        ("ActionQueued", 1),
        ("ActionQueued", 2),
        ("ActionCompleted", 1),
        ("ActionDeleted", 1),
        *((name, 1) for name in AQ_TRANSITIONS),
    },
    topics.SMS_COMMANDS: {("SendSms", 1)},
    topics.CALL_COMMANDS: {("PlaceCall", 1)},
    topics.SMS_RESULTS: {("SmsSent", 1), ("SmsFailed", 1)},
    topics.CALL_RESULTS: {("CallCompleted", 1)},
    topics.DEAD_LETTERS: set(),
    topics.CONTACTS: {("ContactUpdated", 1), ("ContactUpdated", 2)},
    topics.USERS: {("UserUpdated", 1)},
    topics.ACTION_COMMANDS: {("CancelAction", 1)},
    topics.SMS_INBOUND: {("SmsReceived", 1)},
}
EXPECTED_PRODUCERS = {
    topics.ACTION_LIFECYCLE: {
        "workflow-runner": {"ActionQueued"},
        "action-queue": {"ActionCompleted", "ActionDeleted", *AQ_TRANSITIONS},
    },
    topics.SMS_COMMANDS: {"action-queue": {"SendSms"}},
    topics.CALL_COMMANDS: {"action-queue": {"PlaceCall"}},
    topics.SMS_RESULTS: {"sms-sender": {"SmsSent", "SmsFailed"}},
    topics.CALL_RESULTS: {"dialer": {"CallCompleted"}},
    topics.CONTACTS: {"workflow-runner": {"ContactUpdated"}},
    topics.USERS: {"workflow-runner": {"UserUpdated"}},
    topics.ACTION_COMMANDS: {"workflow-runner": {"CancelAction"}},
    topics.SMS_INBOUND: {"sms-sender": {"SmsReceived"}},
}
EXPECTED_CONSUMERS = {
    topics.ACTION_LIFECYCLE: {"action-queue", "workflow-runner", "dashboard"},
    topics.SMS_COMMANDS: {"sms-sender"},
    topics.CALL_COMMANDS: {"dialer"},
    topics.SMS_RESULTS: {"action-queue"},
    topics.CALL_RESULTS: {"action-queue"},
    topics.DEAD_LETTERS: set(),
    topics.CONTACTS: {"action-queue"},
    topics.USERS: {"action-queue"},
    topics.ACTION_COMMANDS: {"action-queue"},
    topics.SMS_INBOUND: {"workflow-runner"},
}
# The directory topics: the newest state per entity, compacted, keyed by the entity id.
DIRECTORY_KEYS = {topics.CONTACTS: "contact_id", topics.USERS: "user_id"}
# Inbound SMS are about a phone number before anyone knows which contact sent them.
OTHER_KEYS = {topics.SMS_INBOUND: "from_phone"}
SERVICES = {"workflow-runner", "action-queue", "sms-sender", "dialer", "dashboard"}


def test_registry_topic_names_equal_the_constants_in_topics_py() -> None:
    assert {t.name for t in registry.topics()} == TOPIC_CONSTANTS
    assert len(TOPIC_CONSTANTS) == 10


def test_topic_files_are_named_after_the_topic() -> None:
    for t in registry.topics():
        assert t.name == f"manual-actions.{t.short_name}"
        assert registry.topic(t.name) is t
    # usable in sets and as dict keys
    assert len({hash(t) for t in registry.topics()}) == len(TOPIC_CONSTANTS)


def test_unknown_topic_is_a_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match=r"manual-actions\.nope"):
        registry.topic("manual-actions.nope")


@pytest.mark.parametrize("name", sorted(EXPECTED_MESSAGES))
def test_topic_carries_the_expected_messages_and_services(name: str) -> None:
    t = registry.topic(name)
    assert set(t.messages) == EXPECTED_MESSAGES[name]
    assert set(t.consumers) == EXPECTED_CONSUMERS[name]
    if name == topics.DEAD_LETTERS:
        # every consuming service may dead-letter what it cannot process
        assert set(t.producers) == SERVICES
    else:
        assert {s: set(m) for s, m in t.produced_by.items()} == EXPECTED_PRODUCERS[name]
        assert set(t.producers) == set(EXPECTED_PRODUCERS[name])
        # what the producers write is exactly what the topic says it carries
        assert set().union(*t.produced_by.values()) == {m for m, _ in t.messages}


def test_every_topic_is_keyed_by_action_id_with_six_partitions_and_delete_policy() -> None:
    for t in registry.topics():
        assert t.partitions == 6
        if t.name in DIRECTORY_KEYS:
            assert t.cleanup_policy == "compact"
            assert t.key.payload_field == DIRECTORY_KEYS[t.name]
            assert t.value_format == registry.ENVELOPE
            continue
        assert t.cleanup_policy == "delete"
        assert t.retention_ms >= 24 * 3600 * 1000
        assert t.kafka_config() == {"cleanup.policy": "delete", "retention.ms": str(t.retention_ms)}
        assert t.key.description
        if t.name == topics.DEAD_LETTERS:
            assert t.key.payload_field is None
            assert t.value_format == registry.ORIGINAL_BYTES
        else:
            assert t.key.payload_field == OTHER_KEYS.get(t.name, "action_id")
            assert t.value_format == registry.ENVELOPE


def test_every_payload_class_is_on_exactly_the_expected_topics() -> None:
    for payload in ALL_MESSAGES:
        expected = sorted(
            n
            for n, carried in EXPECTED_MESSAGES.items()
            if (payload.message_type, payload.message_version) in carried
        )
        assert registry.topic_for_message(payload.message_type) == expected, payload.message_type
        assert len(expected) == 1
    assert registry.topic_for_message("NoSuchThing") == []


def test_registry_lists_exactly_the_payload_classes() -> None:
    assert set(registry.message_types()) == set(PAYLOADS)


def test_every_keyed_payload_has_the_key_field() -> None:
    # the key is data.action_id, so every payload on a keyed topic must have it
    for t in registry.topics():
        for message in t.messages:
            assert t.key.payload_field in PAYLOADS[message].model_fields, message


def test_envelope_topics_document_the_headers_envelopes_carry() -> None:
    envelope = Envelope.wrap(
        PAYLOADS[("ActionDeleted", 1)].model_validate(
            registry.examples_for("ActionDeleted", 1)["created-by-mistake"]["data"]
        ),
        source="action-queue",
        tenant="acme-roofing",
        subject="x",
        sequence=1,
    )
    names = [name for name, _ in envelope.kafka_headers()]
    for t in registry.topics():
        if t.value_format == registry.ENVELOPE:
            assert list(t.headers) == names, t.name


def test_dead_letter_header_constants_equal_the_registry() -> None:
    dlq = registry.topic(topics.DEAD_LETTERS)
    assert tuple(dlq.headers) == dead_letters.HEADERS
    assert dead_letters.HEADERS == (
        "dlq.reason",
        "dlq.original_topic",
        "dlq.original_partition",
        "dlq.original_offset",
        "dlq.consumer_group",
        "dlq.failed_at",
    )


def test_every_payload_class_has_a_valid_schema_with_id_and_title() -> None:
    ids = set()
    for payload in ALL_MESSAGES:
        schema = registry.schema_for(payload.message_type, payload.message_version)
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["title"] == f"{payload.message_type} v{payload.message_version}"
        assert schema["properties"]["type"]["const"] == payload.message_type
        assert schema["properties"]["version"]["const"] == payload.message_version
        assert {"id", "time", "tenant", "subject", "sequence", "data"} <= set(schema["required"])
        ids.add(schema["$id"])
    assert len(ids) == len(ALL_MESSAGES)


def test_schema_for_returns_a_copy_and_raises_for_unknown() -> None:
    registry.schema_for("SendSms", 1)["title"] = "mutated"
    assert registry.schema_for("SendSms", 1)["title"] == "SendSms v1"
    with pytest.raises(KeyError, match="SendSms v9"):
        registry.schema_for("SendSms", 9)


def test_checked_in_schemas_and_asyncapi_match_the_generator() -> None:
    """Drift check: regenerate with `uv run python -m manual_actions.contracts.generate`."""
    assert generate.stale_files() == []


def test_generator_check_mode_fails_on_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # an empty docs dir has no asyncapi.yaml: --check must name it and fail (and write nothing)
    assert generate.main(["--check", "--docs-dir", str(tmp_path)]) == 1
    assert "asyncapi.yaml: missing" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "asyncapi.yaml").write_text("asyncapi: 3.0.0\n")
    assert generate.main(["--check", "--docs-dir", str(tmp_path)]) == 1
    assert "asyncapi.yaml: differs" in capsys.readouterr().err
    assert generate.main(["--check"]) == 0


def test_check_mode_covers_the_generated_tables_of_events_md(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = (generate.DEFAULT_DOCS_DIR / "events.md").read_text("utf-8")
    # asyncapi.yaml as the generator writes it for this folder (its schema $refs are relative)
    asyncapi = tmp_path / "asyncapi.yaml"
    asyncapi.write_text(generate.rendered_files(tmp_path)[asyncapi], "utf-8")
    # no events.md at all
    assert generate.main(["--check", "--docs-dir", str(tmp_path)]) == 1
    assert "events.md: missing" in capsys.readouterr().err
    # the checked-in page is current
    (tmp_path / "events.md").write_text(real, "utf-8")
    assert generate.main(["--check", "--docs-dir", str(tmp_path)]) == 0
    # a table that lags behind the registry (a topic row missing) is stale
    contacts_row = next(
        line for line in real.splitlines() if line.startswith("| `manual-actions.contacts` |")
    )
    (tmp_path / "events.md").write_text(real.replace(contacts_row + "\n", ""), "utf-8")
    assert generate.main(["--check", "--docs-dir", str(tmp_path)]) == 1
    assert "events.md: differs" in capsys.readouterr().err
    # regenerating puts the row back and keeps the hand-written prose byte for byte
    assert generate.render_events_doc(real.replace(contacts_row + "\n", "")) == real
    # without its markers the tables have nowhere to go: an error naming the marker
    start, _ = generate.section_markers("messages")
    (tmp_path / "events.md").write_text(real.replace(start, ""), "utf-8")
    assert generate.main(["--check", "--docs-dir", str(tmp_path)]) == 1
    assert start in capsys.readouterr().err


def test_events_md_tables_list_every_topic_and_message_of_the_registry() -> None:
    text = (generate.DEFAULT_DOCS_DIR / "events.md").read_text("utf-8")
    for t in registry.topics():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{t.name}` |"))
        assert f"`{t.cleanup_policy}`" in row, t.name
        if t.key.payload_field:
            assert f"`data.{t.key.payload_field}`" in row, t.name
    for payload in ALL_MESSAGES:
        assert f"| {payload.message_type} | {payload.message_version} | {payload.kind} |" in text


def test_asyncapi_document_describes_every_topic_and_message() -> None:
    document = generate.asyncapi_document(generate.DEFAULT_DOCS_DIR)
    assert document["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == TOPIC_CONSTANTS
    for channel in document["channels"].values():
        kafka = channel["bindings"]["kafka"]
        t = registry.topic(channel["address"])
        assert kafka["partitions"] == t.partitions
        assert kafka["topicConfiguration"]["retention.ms"] == t.retention_ms
    for payload in ALL_MESSAGES:
        message = document["components"]["messages"][f"{payload.message_type}.v{payload.message_version}"]
        ref = message["payload"]["schema"]["$ref"]
        # the relative reference from docs/ resolves to the checked-in schema
        resolved = (generate.DEFAULT_DOCS_DIR / ref).resolve()
        assert (
            json.loads(resolved.read_text())["$id"]
            == registry.schema_for(payload.message_type, payload.message_version)["$id"]
        )
        assert message["examples"], payload.message_type
    operations = document["operations"]
    assert operations["workflow-runner.send.action-lifecycle"]["messages"] == [
        {"$ref": "#/channels/action-lifecycle/messages/ActionQueued.v1"},
        {"$ref": "#/channels/action-lifecycle/messages/ActionQueued.v2"},
    ]
    assert operations["dashboard.receive.action-lifecycle"]["action"] == "receive"


def test_registry_files_are_package_data() -> None:
    root = importlib.resources.files("manual_actions.contracts")
    assert root.joinpath("topics", "action-lifecycle.yaml").is_file()
    assert root.joinpath("schemas", "SendSms", "v1.json").is_file()
    assert root.joinpath("examples", "SendSms", "v1").is_dir()
    # topics.py (the module) still wins over the topics/ data folder on import
    assert topics.ACTION_LIFECYCLE == "manual-actions.action-lifecycle"
