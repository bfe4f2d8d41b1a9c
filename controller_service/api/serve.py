"""``adaseg serve``: run the controller service with uvicorn.

Flags override the ``ADASEG_*`` variables (see :mod:`controller_service.api.settings`).
The controller takes its store's writer lease first: a second controller on the
same store exits with status 2 and names the holder. torch is imported in the
background after the socket is up, so the service is ready in about a second.
SIGTERM (or SIGINT) stops it: requests in flight get ``ADASEG_SHUTDOWN_SECONDS``
to finish, and the process exits a few seconds later whatever they do, so a pod
always stops within its grace period. Nothing is lost on SIGKILL either, since
every change is in the store before it is answered.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from types import FrameType

from controller_service.api.settings import LOG_LEVELS, Settings, SettingsError

HARD_EXIT_MARGIN = 5.0  # seconds past the graceful shutdown before the process exits anyway


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

    from controller_service.api.app import create_app
    from controller_service.contract.store import StoreError

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app(settings)
    except StoreError as exc:  # StoreBusy included: another controller holds the store
        print(f"adaseg serve: {exc}", file=sys.stderr)
        return 2

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.should_exit:  # the first signal arms the hard exit
                deadline = settings.shutdown_seconds + HARD_EXIT_MARGIN
                timer = threading.Timer(deadline, os._exit, args=(1,))
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=int(settings.shutdown_seconds),
    )
    Server(config).run()
    return 0
