"""Arguments that several verbs share, declared once: --set, --output, and where a server listens."""

from __future__ import annotations

import argparse
import os


def add_overrides(p: argparse.ArgumentParser, example: str, metavar: str = "KEY=VALUE") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar=metavar, help=example)


def add_output(p: argparse.ArgumentParser, help: str = "folder to write into", required: bool = True,
               metavar: str = "DIR") -> None:
    p.add_argument("--output", "-o", required=required, metavar=metavar, help=help)


def add_listen(p: argparse.ArgumentParser, key_env: str, key_help: str) -> None:
    """--host (loopback by default), --port, --api-key (default $`key_env`) and --allowed-host."""
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=os.environ.get(key_env), help=key_help)
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests with this Host header (a name or address, any port; repeatable). "
                   "Loopback names and the --host address are always allowed")


def bound_hosts(host: str, allowed: list[str]) -> list[str]:
    """The Host names to answer besides loopback: the address bound (unless it is every address) and `allowed`."""
    return ([host] if host not in ("0.0.0.0", "::", "") else []) + allowed
