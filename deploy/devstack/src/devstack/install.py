"""Install what a fresh machine lacks into ``<repo>/.cache`` and check the system tools.

System tools (Java 17+, Maven, Node.js/npm, PostgreSQL server binaries) come from the OS packages
(CI installs them with apt-get before running this). What this module fetches itself, each step
skipped when its cache is already complete for the same inputs:

* Kafka's jars, resolved from ``deploy/kafka/pom.xml`` with Maven into ``.cache/kafka-<version>/libs``
  (Maven's own repository under ``.cache/m2``);
* Prism and Twilio's OpenAPI spec from ``deploy/twilio-mock/package-lock.json`` with ``npm ci`` into
  ``.cache/twilio-mock``, plus the patched copy of the spec that Prism serves.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack._util import ComponentError, run_checked
from devstack.paths import cache_dir, repo_root

KAFKA_VERSION = "4.1.1"
SPEC_RELATIVE = Path("node_modules/@twilio/cli-core/src/services/twilio-api/twilio_api_v2010.json")
# Bump when patch_twilio_spec changes, so cached patched specs are rebuilt.
SPEC_PATCH_VERSION = "1"
MIN_JAVA = 17


@dataclass(frozen=True)
class Toolchain:
    """Where the system tools are."""

    java: str
    mvn: str
    node: str
    npm: str
    pg_bin: Path


def _which(name: str) -> str | None:
    return shutil.which(name)


def java_major(java: str) -> int:
    """The major version of the ``java`` executable (``java -version`` prints it on stderr)."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return 0
    major = int(match.group(1))
    # Java 8 and older report "1.8".
    return int(match.group(2) or 0) if major == 1 else major


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` (``MA_PG_BIN`` overrides)."""
    override = os.environ.get("MA_PG_BIN")
    if override:
        path = Path(override)
        return path if (path / "initdb").is_file() else None
    base = Path("/usr/lib/postgresql")
    if not base.is_dir():
        return None
    versions = []
    for child in base.iterdir():
        if (child / "bin" / "initdb").is_file() and (child / "bin" / "pg_ctl").is_file():
            try:
                versions.append((float(child.name), child / "bin"))
            except ValueError:
                continue
    return max(versions)[1] if versions else None


def check_toolchain(*, need_build_tools: bool = True) -> Toolchain:
    """Find the system tools; raise ComponentError listing every missing one and how to get it.

    ``need_build_tools`` is False when the caches are complete: then Maven and npm are not needed.
    """
    problems: list[str] = []
    java = _which("java")
    if java is None:
        problems.append("java not found (Debian: apt-get install openjdk-17-jre-headless)")
    elif java_major(java) < MIN_JAVA:
        problems.append(f"java at {java} is older than {MIN_JAVA}")
    mvn = _which("mvn")
    if mvn is None and need_build_tools:
        problems.append("mvn not found (Debian: apt-get install maven)")
    node = _which("node")
    if node is None:
        problems.append("node not found (Debian: apt-get install nodejs npm)")
    npm = _which("npm")
    if npm is None and need_build_tools:
        problems.append("npm not found (Debian: apt-get install npm)")
    pg_bin = find_pg_bin()
    if pg_bin is None:
        problems.append(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/<version>/bin "
            "(Debian: apt-get install postgresql; or set MA_PG_BIN)"
        )
    if problems:
        raise ComponentError("toolchain", "missing system tools:\n  - " + "\n  - ".join(problems))
    assert java and node and pg_bin
    return Toolchain(java=java, mvn=mvn or "mvn", node=node, npm=npm or "npm", pg_bin=pg_bin)


def _digest(*paths: Path, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """Serialise installs between processes (a test session and the demo may start together)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".install.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def kafka_home() -> Path:
    return cache_dir() / f"kafka-{KAFKA_VERSION}"


def kafka_libs() -> Path:
    return kafka_home() / "libs"


def twilio_mock_home() -> Path:
    return cache_dir() / "twilio-mock"


def patched_spec_path() -> Path:
    return twilio_mock_home() / "twilio_api_v2010.patched.json"


def prism_bin() -> Path:
    return twilio_mock_home() / "node_modules" / ".bin" / "prism"


def _kafka_complete(pom: Path) -> bool:
    marker = kafka_home() / ".complete"
    return marker.is_file() and marker.read_text() == _digest(pom)


def install_kafka(tools: Toolchain) -> Path:
    """Resolve Kafka's runtime jars into ``.cache/kafka-<version>/libs``; skip when present."""
    pom = repo_root() / "deploy" / "kafka" / "pom.xml"
    if _kafka_complete(pom):
        return kafka_libs()
    libs = kafka_libs()
    if libs.exists():
        shutil.rmtree(libs)
    log = cache_dir() / "install-kafka.log"
    run_checked(
        [
            tools.mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={libs}",
            f"-Dmaven.repo.local={cache_dir() / 'm2'}",
        ],
        component="kafka install (mvn)",
        log_file=log,
        timeout=1200,
    )
    if not any(libs.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
        raise ComponentError("kafka install (mvn)", f"no kafka_2.13-{KAFKA_VERSION}.jar in {libs}", log)
    (kafka_home() / ".complete").write_text(_digest(pom))
    return libs


def install_twilio_mock(tools: Toolchain) -> Path:
    """``npm ci`` Prism and @twilio/cli-core into ``.cache/twilio-mock``, then patch the spec."""
    source = repo_root() / "deploy" / "twilio-mock"
    home = twilio_mock_home()
    lock = source / "package-lock.json"
    marker = home / ".complete"
    log = cache_dir() / "install-twilio-mock.log"
    if not (marker.is_file() and marker.read_text() == _digest(source / "package.json", lock)):
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / "package.json", home / "package.json")
        shutil.copy2(lock, home / "package-lock.json")
        run_checked(
            [tools.npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            component="twilio mock install (npm)",
            log_file=log,
            cwd=home,
            timeout=1200,
        )
        if not prism_bin().exists() or not (home / SPEC_RELATIVE).is_file():
            raise ComponentError(
                "twilio mock install (npm)", "prism or the Twilio spec is missing after npm ci", log
            )
        marker.write_text(_digest(source / "package.json", lock))
        patched_spec_path().unlink(missing_ok=True)
    write_patched_spec(home / SPEC_RELATIVE, patched_spec_path())
    return home


def patch_twilio_spec(spec: dict[str, Any]) -> int:
    """Declare ``style: form, explode: true`` for every array property of every form request body.

    Twilio sends array parameters as repeated keys (``StatusCallbackEvent=ringing&
    StatusCallbackEvent=answered``), and so does its SDK. Twilio's spec does not declare an
    encoding, and without one Prism reads a repeated key as a plain string and rejects it as
    "must be array". Returns the number of properties declared.
    """
    count = 0
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            content = operation.get("requestBody", {}).get("content", {})
            form = content.get("application/x-www-form-urlencoded")
            if not form:
                continue
            properties = form.get("schema", {}).get("properties", {})
            encoding = form.setdefault("encoding", {})
            for name, schema in properties.items():
                if schema.get("type") == "array" and name not in encoding:
                    encoding[name] = {"style": "form", "explode": True}
                    count += 1
            if not encoding:
                del form["encoding"]
    return count


def write_patched_spec(original: Path, target: Path) -> Path:
    """Write the patched spec next to the installed packages unless it is already current."""
    stamp = target.with_suffix(".stamp")
    digest = _digest(original, extra=SPEC_PATCH_VERSION)
    if target.is_file() and stamp.is_file() and stamp.read_text() == digest:
        return target
    spec = json.loads(original.read_text())
    patch_twilio_spec(spec)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec))
    tmp.replace(target)
    stamp.write_text(digest)
    return target


def caches_complete() -> bool:
    """True when Kafka's jars and the Twilio mock packages are installed for the current inputs."""
    root = repo_root()
    source = root / "deploy" / "twilio-mock"
    marker = twilio_mock_home() / ".complete"
    npm_ok = marker.is_file() and marker.read_text() == _digest(
        source / "package.json", source / "package-lock.json"
    )
    return _kafka_complete(root / "deploy" / "kafka" / "pom.xml") and npm_ok


def ensure_installed() -> Toolchain:
    """Check the system tools and install the caches that are missing; return the toolchain."""
    with _install_lock():
        complete = caches_complete()
        tools = check_toolchain(need_build_tools=not complete)
        # Maven and npm mostly wait on the network: run them side by side.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="devstack-install") as pool:
            kafka = pool.submit(install_kafka, tools)
            mock = pool.submit(install_twilio_mock, tools)
            kafka.result()
            mock.result()
        return tools
