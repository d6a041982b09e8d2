"""``ma-devstack``: start, stop and inspect the local stack, or install its tools.

    ma-devstack install              install Kafka jars and npm packages into .cache/, check tools
    ma-devstack up [--json]          start (or reuse) the stack; print its URLs
    ma-devstack status               print stack.json plus liveness as JSON (exit 1 if not running)
    ma-devstack down [--remove]      stop it (and delete its run directory with --remove)
    ma-devstack env                  print the services' environment variables (shell syntax)

``--run-dir`` (or ``MA_RUN_DIR``) selects the stack; the default is ``<repo>/.run/demo``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from devstack._util import ComponentError
from devstack.install import ensure_installed
from devstack.stack import Stack


def _print_urls(stack: Stack, seconds: float) -> None:
    print(f"stack up in {seconds:.1f} s  (run dir: {stack.run_dir})")
    print(f"  kafka bootstrap   {stack.kafka_bootstrap}")
    print(f"  postgres          {stack.postgres_url}/<database>")
    print(f"  twilio api        {stack.twilio_base_url}   (account {stack.twilio_account_sid})")
    print(f"  twilio mock log   {stack.twilio_base_url}/__mock/requests")
    for name, path in stack.logs.items():
        print(f"  log {name:<14}{path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ma-devstack", description="Local Kafka, PostgreSQL and Twilio mock."
    )
    parser.add_argument("--run-dir", type=Path, default=None, help="stack directory (default .run/demo)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install Kafka jars and npm packages into .cache/, check system tools")
    up = sub.add_parser("up", help="start or reuse the stack")
    up.add_argument("--json", action="store_true", help="print the status JSON instead of URLs")
    up.add_argument("--no-fsync", action="store_true", help="PostgreSQL without fsync (tests only)")
    down = sub.add_parser("down", help="stop the stack")
    down.add_argument("--remove", action="store_true", help="also delete the run directory")
    sub.add_parser("status", help="print the stack's state as JSON")
    sub.add_parser("env", help="print KAFKA_BOOTSTRAP_SERVERS, TWILIO_* as shell assignments")
    args = parser.parse_args(argv)

    try:
        if args.command == "install":
            tools = ensure_installed()
            print(f"ok: java={tools.java} node={tools.node} postgres={tools.pg_bin}; caches in place")
            return 0
        if args.command == "up":
            begin = time.monotonic()
            stack = Stack(args.run_dir, fsync=not args.no_fsync).start()
            if args.json:
                print(json.dumps(stack.status(), indent=2, sort_keys=True))
            else:
                _print_urls(stack, time.monotonic() - begin)
            return 0
        if args.command == "down":
            stack = Stack(args.run_dir)
            if args.remove:
                stack.remove()
            else:
                stack.stop()
            print(f"stopped ({stack.run_dir})")
            return 0
        if args.command == "status":
            status = Stack(args.run_dir).status()
            print(json.dumps(status, indent=2, sort_keys=True))
            return 0 if status.get("running") else 1
        if args.command == "env":
            for key, value in Stack.load(args.run_dir).env().items():
                print(f"export {key}={shlex.quote(value)}")
            return 0
    except ComponentError as exc:
        print(f"ma-devstack: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
