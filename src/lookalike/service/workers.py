"""Several API worker processes on one store: `lookalike serve --workers N`.

uvicorn's supervisor starts N processes sharing the listening socket (and restarts one that dies);
each builds its own app from the validated settings handed over in the environment, since a loaded
model cannot be inherited across a process spawn. On a PostgreSQL store every worker reads and
writes the same database, so a write through one worker is visible to the next search on any other.
The embedded store works too (file lock + snapshot check) but keeps a full copy in every worker.
"""

from __future__ import annotations

import logging
import os

from lookalike.errors import LookalikeError

ENV = "LOOKALIKE_SERVICE_SETTINGS"
LOG_LEVEL_ENV = "LOOKALIKE_LOG_LEVEL"  # the serving command's log level, for the worker processes it spawns
HEADER = b"x-lookalike-worker"


class ServedApp:
    """The app as a served process runs it: names the worker process that answered (operators tell
    workers apart in logs and load tests), and at shutdown releases the store, since uvicorn ends a
    process stopped by SIGTERM without running its exit handlers."""

    def __init__(self, app):
        self.app, self.pid = app, str(os.getpid()).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":

            async def send_and_release(message):
                if message["type"] == "lifespan.shutdown.complete":
                    self.app.state.service.release()
                await send(message)

            return await self.app(scope, receive, send_and_release)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_pid(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (HEADER, self.pid)]}
            await send(message)

        await self.app(scope, receive, send_with_pid)


def app_from_env():
    """The app factory each worker process calls (uvicorn `factory=True`); a spawned process starts with no
    logging set up, so it takes the serving command's level (the request log is at INFO)."""
    from lookalike.cli import setup_logging
    from lookalike.service.app import ServiceSettings, create_app

    raw = os.environ.get(ENV)
    if not raw:
        raise LookalikeError(f"{ENV} is not set: start workers with `lookalike serve --workers N`")
    level = int(os.environ.get(LOG_LEVEL_ENV, logging.INFO))
    setup_logging(verbose=level <= logging.DEBUG, quiet=level >= logging.WARNING)
    return ServedApp(create_app(ServiceSettings.model_validate_json(raw)))


def serve(settings, host: str, port: int, workers: int = 1, app=None, log_level: str = "warning") -> None:
    """Run the service in this process (workers=1, `app` if already built) or under uvicorn's supervisor."""
    import uvicorn

    if workers == 1:
        from lookalike.service.app import create_app

        uvicorn.run(ServedApp(app or create_app(settings)), host=host, port=port, workers=1, log_level=log_level)
        return
    os.environ[ENV] = settings.model_dump_json()
    os.environ[LOG_LEVEL_ENV] = str(logging.getLogger("lookalike").getEffectiveLevel())
    uvicorn.run(
        "lookalike.service.workers:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )
