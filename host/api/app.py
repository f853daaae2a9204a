"""The FastAPI app: a factory, with a lifespan that starts and stops the fleet.

    app = create_app(Fleet.from_config("arm.toml"), tokens=TokenStore.load("tokens.toml"))

The app owns the fleet it is given: its lifespan starts it (and the telemetry hub) and closes
it. Routes are in routes.py, errors in errors.py, who may call what in security.py.
"""

import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from typing import Final

from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from servomesh.host.api import errors, metrics, routes
from servomesh.host.api.auth import TokenStore
from servomesh.host.api.errors import ApiError
from servomesh.host.api.security import Viewer, websocket_identity
from servomesh.host.api.telemetry import TelemetryHub
from servomesh.host.fleet import Fleet
from servomesh.host.poses import PoseBook

READY_TIMEOUT_S: Final = 5.0
DASHBOARD: Final = resources.files("servomesh.host.api") / "dashboard"
_POLICY_VIOLATION: Final = 1008  # WebSocket close code


def create_app(
    fleet: Fleet,
    *,
    tokens: TokenStore | None = None,
    origins: frozenset[str] = frozenset(),
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> FastAPI:
    """The API for `fleet`. `tokens`: who may call (none: every request acts as admin, for a
    server bound to loopback only; `serve` enforces that). `origins`: other web origins that
    may open the telemetry WebSocket and call the API from a browser (CORS)."""
    hub = TelemetryHub(fleet)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await fleet.start(ready_timeout_s)
        await hub.start()
        try:
            yield
        finally:
            await hub.close()
            await fleet.close()

    app = FastAPI(
        title="servomesh",
        summary="Run servo-driven hardware: nodes, joints, poses, sequences, stop.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; servomesh works offline
        redoc_url=None,
    )
    app.state.fleet = fleet
    app.state.tokens = tokens or TokenStore()
    app.state.poses = PoseBook(fleet)
    app.state.hub = hub
    registry = metrics.registry(fleet, hub)
    errors.install(app)
    if origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=sorted(origins),
            allow_methods=["GET", "PUT", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.include_router(routes.commands)
    app.include_router(routes.api)
    app.include_router(routes.probes)

    @app.get("/metrics", tags=["probes"], response_class=Response, responses=errors.RESPONSES)
    async def prometheus(_: Viewer) -> Response:
        return Response(metrics.render(registry), media_type=metrics.CONTENT_TYPE)

    @app.websocket("/api/telemetry")
    async def telemetry(websocket: WebSocket) -> None:
        try:
            websocket_identity(websocket, origins)  # every token is at least a viewer
        except ApiError as error:
            await websocket.close(code=_POLICY_VIOLATION, reason=error.detail)
            return
        await hub.serve(websocket)

    @app.get("/", include_in_schema=False)
    async def dashboard(_request: Request) -> FileResponse:
        return FileResponse(str(DASHBOARD / "index.html"), media_type="text/html")

    app.mount("/dashboard", StaticFiles(directory=str(DASHBOARD)), name="dashboard")
    return app
