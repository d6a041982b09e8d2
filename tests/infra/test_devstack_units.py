"""devstack pieces that need no running stack: the spec patch, form parsing, process handling."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devstack import ComponentError
from devstack._util import pid_alive, spawn, terminate
from devstack.install import patch_twilio_spec
from devstack.kafka import Kafka, cluster_id, server_properties
from devstack.processes import ServiceFailedToStart, ServiceProcesses, free_ports
from devstack.twilio_proxy import form_to_dict, is_loopback_url


def _form_op(properties: dict[str, object]) -> dict[str, object]:
    return {
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": properties}}
            }
        }
    }


def test_spec_patch_declares_exploded_form_encoding_for_array_fields_only() -> None:
    spec = {
        "paths": {
            "/Calls.json": {
                "post": _form_op(
                    {
                        "To": {"type": "string"},
                        "StatusCallbackEvent": {"type": "array", "items": {"type": "string"}},
                    }
                ),
                "parameters": [],
            },
            "/Plain.json": {"post": _form_op({"To": {"type": "string"}})},
        }
    }
    assert patch_twilio_spec(spec) == 1
    form = spec["paths"]["/Calls.json"]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"]
    assert form["encoding"] == {"StatusCallbackEvent": {"style": "form", "explode": True}}
    plain = spec["paths"]["/Plain.json"]["post"]["requestBody"]["content"][
        "application/x-www-form-urlencoded"
    ]
    assert "encoding" not in plain
    assert patch_twilio_spec(spec) == 0  # idempotent


def test_repeated_form_keys_become_lists() -> None:
    pairs = [("To", "+1"), ("StatusCallbackEvent", "ringing"), ("StatusCallbackEvent", "answered")]
    assert form_to_dict(pairs) == {"To": "+1", "StatusCallbackEvent": ["ringing", "answered"]}


def test_callbacks_only_go_to_loopback() -> None:
    assert is_loopback_url("http://127.0.0.1:8103/twilio/status")
    assert is_loopback_url("http://localhost/x")
    assert is_loopback_url("http://[::1]:80/x")
    assert not is_loopback_url("https://example.com/x")
    assert not is_loopback_url("http://10.0.0.5/x")


def test_single_node_kraft_properties() -> None:
    text = server_properties(
        port=1111, controller_port=2222, data_dir=Path("/d"), auto_create_topics=False, partitions=6
    )
    props = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:2222"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1111,CONTROLLER://127.0.0.1:2222"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["num.partitions"] == "6"


def test_terminate_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    marker = str(tmp_path)
    script = "import signal, time, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    pid = spawn(
        [sys.executable, "-c", script, marker],
        log_file=tmp_path / "child.log",
        pid_file=tmp_path / "child.pid",
    )
    deadline = time.monotonic() + 10
    while not pid_alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_alive(pid, marker)
    assert not pid_alive(pid, "some-other-marker")  # never signal a recycled pid
    started = time.monotonic()
    terminate(pid, marker, timeout=0.5)
    assert not pid_alive(pid, marker)
    assert time.monotonic() - started < 5


def test_a_component_that_cannot_start_is_named_with_its_log(tmp_path: Path) -> None:
    false = subprocess.run(["which", "false"], capture_output=True, text=True, check=True).stdout.strip()
    kafka = Kafka(tmp_path, java=false)
    with pytest.raises(ComponentError) as caught:
        kafka.start(None, timeout=5)
    assert caught.value.component == "kafka"
    assert caught.value.log_file is not None and caught.value.log_file.name == "format.log"
    assert str(caught.value.log_file) in str(caught.value)


def test_cluster_ids_never_look_like_command_line_options() -> None:
    ids = [cluster_id() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)


def test_free_ports_are_distinct() -> None:
    ports = free_ports(200)
    assert len(set(ports)) == 200


class _OtherService(BaseHTTPRequestHandler):
    """Ready, and names itself "dashboard"."""

    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "service": "dashboard"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_a_service_whose_port_another_service_answers_is_not_taken_for_ready(tmp_path: Path) -> None:
    # Two services given one port: the one that bound it answers /ready for both, while the other
    # is still starting and fails to bind a moment later.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtherService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    starting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        processes = ServiceProcesses(object(), tmp_path,  # no stack needed: nothing is started
                                     ports={"sms-sender": server.server_address[1]})
        processes.processes["sms-sender"] = starting
        with pytest.raises(ServiceFailedToStart, match="answered by 'dashboard'"):
            processes._wait_ready("sms-sender", time.monotonic() + 10)
    finally:
        starting.kill()
        starting.wait()
        server.shutdown()
        server.server_close()
