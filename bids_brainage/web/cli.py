"""``bids_brainage-web``: ``serve`` the web app, or run the queue's ``worker``.

    bids_brainage-web serve  [--host 127.0.0.1] [--port 8000] [--broker URL] [--data-dir DIR]
    bids_brainage-web worker [--concurrency 1] [--threads N] [--broker URL] [--data-dir DIR]

Every option can also be set by an environment variable (``--help`` names each one). The
parser imports nothing heavy: ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import logging
import sys

from bids_brainage import __version__
from bids_brainage.web.settings import OPTIONS, WebSettings, env_default

EXIT_OK, EXIT_USAGE = 0, 64
MISSING_EXTRA = ("the web service needs its extra dependencies: pip install "
                 "'bids_brainage[web]' ({error})")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bids_brainage-web",
        description="A brain-age web service for a lab: people upload a T1w scan on a page, "
                    "a queue worker runs the BIDS App's participant workflow on it, the page "
                    "shows the ages and the report. Run one `serve` and one or more `worker` "
                    "with the same --broker and --data-dir (redis-server must be running).",
    )
    parser.add_argument("--version", action="version", version=f"bids_brainage {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{serve,worker}")
    helps = {"serve": "start the web app (upload page, job pages, JSON API)",
             "worker": "start a queue worker that runs the jobs"}
    for command, text in helps.items():
        sub = commands.add_parser(command, help=text, description=text)
        for option in OPTIONS:
            if command not in option.commands:
                continue
            default = env_default(option)
            sub.add_argument(option.flag, dest=option.name, type=option.type, default=default,
                             metavar=option.metavar or option.name.split("_")[-1].upper(),
                             help=f"{option.help} (env {option.env}; default: {default})")
        sub.add_argument("-v", "--verbose", action="count", default=0,
                         help="more log messages (-vv for debug)")
    return parser


def _setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%H:%M:%S"))
    logger = logging.getLogger("bids_brainage")  # the web's messages and the app's
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    settings = WebSettings.from_args(args)
    problems = [f"--{name} must be at least 1" for name in ("port", "concurrency")
                if getattr(settings, name) < 1] + (
        ["--max-upload-mb must be positive"] if settings.max_upload_mb <= 0 else []) + (
        ["--retention-days must be positive"] if settings.retention_days <= 0 else [])
    if problems:
        print("bids_brainage-web: " + "; ".join(problems), file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(args.verbose)
    try:
        if args.command == "serve":
            return serve(settings)
        from bids_brainage.web.queue import run_worker

        return run_worker(settings)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("celery", "starlette", "uvicorn",
                                                    "python_multipart", "redis", "kombu"):
            print(MISSING_EXTRA.format(error=exc), file=sys.stderr)
            return EXIT_USAGE
        raise


def serve(settings: WebSettings) -> int:
    import uvicorn

    from bids_brainage.web.app import create_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("bids_brainage.web").info(
        "serving on http://%s:%d, jobs in %s, broker %s", settings.host, settings.port,
        settings.data_dir, settings.broker)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="info", proxy_headers=True, timeout_keep_alive=10)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
