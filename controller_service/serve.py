"""``adaseg serve``: run the controller service with uvicorn.

Flags override the ``ADASEG_*`` variables (see :mod:`controller_service.settings`).
torch is imported in the background after the socket is up, so the service is
ready in about a second; SIGTERM shuts it down gracefully, and nothing is lost
on SIGKILL because every change is in the store before it is answered.
"""

from __future__ import annotations

import argparse
import logging
import sys

from controller_service.settings import LOG_LEVELS, Settings, SettingsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", help="store URI, file:///dir or s3://bucket/prefix "
        "(default: $ADASEG_STORE, else file://$PWD/outputs/store)"
    )  # fmt: skip
    parser.add_argument("--host", help="listen address (default: $ADASEG_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default: $ADASEG_PORT, else 8080)")
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, help="default: $ADASEG_LOG_LEVEL, else info"
    )


def main(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env().override(
            store=args.store, host=args.host, port=args.port, log_level=args.log_level
        )
    except SettingsError as exc:
        print(f"adaseg serve: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from controller_service.app import create_app
    from controller_service.store import StoreError

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app(settings)
    except StoreError as exc:
        print(f"adaseg serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
    )
    return 0
