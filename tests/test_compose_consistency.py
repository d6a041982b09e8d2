"""docker-compose.yml must describe the same services, ports and settings as the code.

Each service's environment in the compose file may only use variables its settings class reads,
must name the service and its own database, and must publish the port the local launcher uses.
"""

from __future__ import annotations

import importlib
import inspect
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from devstack.processes import SPECS
from manual_actions.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
INFRASTRUCTURE = {"kafka", "postgres"}


def settings_class(service: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"{service.replace('-', '_')}.entrypoints.main")
    candidates = [
        value
        for value in vars(module).values()
        if inspect.isclass(value) and issubclass(value, ServiceSettings) and value is not ServiceSettings
    ]
    assert candidates, f"{module.__name__} has no ServiceSettings subclass"
    # the most derived one is the service's own
    return max(candidates, key=lambda cls: len(cls.__mro__))


def compose_env(service: str) -> dict[str, str]:
    return {key: str(value) for key, value in COMPOSE["services"][service]["environment"].items()}


def test_compose_lists_exactly_the_five_services_and_the_infrastructure() -> None:
    assert set(COMPOSE["services"]) == set(SPECS) | INFRASTRUCTURE


@pytest.mark.parametrize("service", sorted(SPECS))
def test_service_environment_matches_its_settings(service: str) -> None:
    env = compose_env(service)
    fields = settings_class(service).model_fields
    known = {name.upper() for name in fields}
    assert set(env) <= known, f"{service}: unknown variables {sorted(set(env) - known)}"
    required = {name.upper() for name, field in fields.items() if field.is_required()}
    assert required <= set(env), f"{service}: required variables missing {sorted(required - set(env))}"
    assert env["SERVICE_NAME"] == service
    assert int(env["HTTP_PORT"]) == SPECS[service].default_port
    assert COMPOSE["services"][service]["ports"] == [
        f"{SPECS[service].default_port}:{SPECS[service].default_port}"
    ]
    assert env["KAFKA_BOOTSTRAP_SERVERS"].split(":")[0] == "kafka"
    if "DATABASE_URL" in env:
        url = urlsplit(env["DATABASE_URL"])
        assert url.hostname == "postgres"
        assert url.path.lstrip("/") == SPECS[service].database


@pytest.mark.parametrize("service", sorted(SPECS))
def test_service_image_runs_the_services_console_script(service: str) -> None:
    build: dict[str, Any] = COMPOSE["services"][service]["build"]
    assert build["args"]["SERVICE"] == service
    assert (ROOT / build["dockerfile"]).exists()
    project = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())["project"]
    assert project["name"] == service
    assert service in project["scripts"]
