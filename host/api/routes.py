"""The REST routes (docs/api.md, section 3): thin calls into the Fleet, which holds the logic.

Errors are not handled here: fleet and node errors go to errors.py, which maps them all."""

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from servomesh.host import oplog
from servomesh.host.api import models
from servomesh.host.api.auth import Identity
from servomesh.host.api.errors import RESPONSES, ApiError
from servomesh.host.api.security import Admin, Operator, Viewer
from servomesh.host.fleet import Fleet, UnknownNameError
from servomesh.host.oplog import MAX_QUERY_LIMIT
from servomesh.host.poses import PoseBook

commands = APIRouter(prefix="/api", responses=RESPONSES)  # included first: see below
api = APIRouter(prefix="/api", responses=RESPONSES)
probes = APIRouter()


def _fleet(request: Request) -> Fleet:
    fleet: Fleet = request.app.state.fleet
    return fleet


def _source(identity: Identity) -> str:
    return "api:%s" % identity.name


# -- commands: matched first -------------------------------------------------------------------
# The routes that move or stop, in a router of their own that the app includes before the
# others: FastAPI tries routes in order, twice per included router (does it match, then which
# one), and each route tried costs the request a few µs. STOP comes first of all.


@commands.post("/stop", tags=["stop"])
async def stop(
    request: Request, who: Operator, body: models.StopRequest | None = None
) -> models.Command:
    release = (body or models.StopRequest()).release
    trace = await _fleet(request).stop(release=release, source=_source(who))
    return models.Command(trace_id=trace, action="stop")


@commands.post("/stop/clear", tags=["stop"])
async def clear(request: Request, who: Operator) -> models.Command:
    trace = await _fleet(request).clear(source=_source(who))
    return models.Command(trace_id=trace, action="clear")


@commands.put("/joints/{name}", tags=["joints"])
async def set_joint(
    request: Request, name: str, command: models.JointCommand, who: Operator
) -> models.Command:
    trace = await _fleet(request).set(
        name,
        command.deg,
        duration_ms=command.ms or 0,
        speed_deg_per_s=command.speed_deg_per_s,
        source=_source(who),
    )
    return models.Command(trace_id=trace, action="set")


@commands.post("/moves", tags=["joints"])
async def move(request: Request, body: models.MoveRequest, who: Operator) -> models.Command:
    trace = await _fleet(request).move(body.targets, body.duration_ms, source=_source(who))
    return models.Command(trace_id=trace, action="move")


@commands.post("/poses/{name}/go", tags=["poses"])
async def go_to_pose(
    request: Request, name: str, who: Operator, body: models.GoRequest | None = None
) -> models.Command:
    duration_ms = (body or models.GoRequest()).duration_ms
    trace = await _fleet(request).pose(name, duration_ms, source=_source(who))
    return models.Command(trace_id=trace, action="pose")


# -- nodes -------------------------------------------------------------------------------------


@api.get("/nodes", tags=["nodes"])
async def list_nodes(request: Request, _: Viewer) -> list[models.Node]:
    return [models.Node.of(row) for row in _fleet(request).nodes()]


@api.get("/nodes/{name}", tags=["nodes"])
async def get_node(request: Request, name: str, _: Viewer) -> models.Node:
    for row in _fleet(request).nodes():
        if row["name"] == name:
            return models.Node.of(row)
    raise UnknownNameError("no node named %r" % name)


@api.post("/nodes/{name}/reboot", tags=["nodes"])
async def reboot_node(request: Request, name: str, who: Admin) -> models.Command:
    trace = await _fleet(request).reboot(name, source=_source(who))
    return models.Command(trace_id=trace, action="reboot")


# -- joints ------------------------------------------------------------------------------------


@api.get("/joints", tags=["joints"])
async def list_joints(request: Request, _: Viewer) -> list[models.Joint]:
    fleet = _fleet(request)
    return [models.Joint.of(fleet, name) for name in fleet.config.joints]


@api.get("/joints/{name}", tags=["joints"])
async def get_joint(request: Request, name: str, _: Viewer) -> models.Joint:
    return models.Joint.of(_fleet(request), name)


# -- poses and sequences -----------------------------------------------------------------------


def _poses(request: Request) -> PoseBook:
    poses: PoseBook = request.app.state.poses
    return poses


@api.get("/poses", tags=["poses"])
async def list_poses(request: Request, _: Viewer) -> dict[str, models.Pose]:
    return {
        name: models.Pose(name=name, joints=joints, saved=saved)
        for name, (joints, saved) in _poses(request).all().items()
    }


@api.put("/poses/{name}", tags=["poses"])
async def save_pose(
    request: Request, name: models.JointName, body: models.PoseBody, _: Admin
) -> models.Pose:
    _poses(request).save(name, body.joints)
    return models.Pose(name=name, joints=body.joints, saved=True)


@api.delete("/poses/{name}", tags=["poses"], status_code=204)
async def delete_pose(request: Request, name: str, _: Admin) -> Response:
    _poses(request).delete(name)
    return Response(status_code=204)


@api.get("/sequences", tags=["sequences"])
async def list_sequences(request: Request, _: Viewer) -> list[models.Sequence]:
    return [
        models.Sequence(
            name=name,
            keyframes=len(sequence.keyframes),
            duration_ms=sequence.keyframes[-1].at_ms,
            loop=sequence.loop,
        )
        for name, sequence in _fleet(request).config.sequences.items()
    ]


@api.post("/sequences/stop", tags=["sequences"])
async def stop_sequence(request: Request, _: Operator) -> models.SequenceStopped:
    return models.SequenceStopped(stopped=await _fleet(request).stop_sequence())


@api.post("/sequences/{name}/play", tags=["sequences"], status_code=202)
async def play_sequence(
    request: Request, name: str, who: Operator, body: models.PlayRequest | None = None
) -> models.Command:
    lead_in_ms = (body or models.PlayRequest()).lead_in_ms
    trace = _fleet(request).start_sequence(name, lead_in_ms=lead_in_ms, source=_source(who))
    return models.Command(trace_id=trace, action="sequence")


# -- stop status -------------------------------------------------------------------------------


@api.get("/status", tags=["stop"])
async def status(request: Request, _: Viewer) -> models.Status:
    return models.Status.model_validate(_fleet(request).status())


# -- operation log -----------------------------------------------------------------------------


@api.get("/log", tags=["log"])
async def operation_log(
    request: Request,
    _: Viewer,
    joint: Annotated[str | None, Query(max_length=64)] = None,
    result: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    source: Annotated[str | None, Query(max_length=128)] = None,
    since_s: Annotated[float | None, Query(ge=0, le=1e10)] = None,
    until_s: Annotated[float | None, Query(ge=0, le=1e10)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_QUERY_LIMIT)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> models.LogPage:
    log = _fleet(request).oplog
    if log is None:
        return models.LogPage(entries=[], next_before_id=None)

    def read() -> list[oplog.Operation]:  # SQLite, off the event loop
        log.flush()  # what was just done shows
        return log.query(
            since_s=since_s,
            until_s=until_s,
            joint=joint,
            result=result,
            source=source,
            action=action,
            limit=limit,
            before_id=before_id,
        )

    try:
        entries = await asyncio.to_thread(read)
    except ValueError as error:  # filters that contradict each other, e.g. until before since
        raise ApiError(422, "invalid", str(error)) from None
    page = [models.Operation.model_validate(entry, from_attributes=True) for entry in entries]
    last = page[-1].id if len(page) == limit else None
    return models.LogPage(entries=page, next_before_id=last)


# -- probes ------------------------------------------------------------------------------------


@probes.get("/healthz", tags=["probes"])
async def healthz() -> models.Health:
    return models.Health()


@probes.get(
    "/readyz",
    tags=["probes"],
    responses={503: {"model": models.Readiness, "description": "some node is not ready"}},
)
async def readyz(request: Request) -> JSONResponse:
    waiting = {
        row["name"]: "%s: %s" % (row["state"], row["why"])
        for row in _fleet(request).nodes()
        if row["state"] not in ("ready", "degraded")
    }
    body = models.Readiness(ready=not waiting, not_ready=waiting)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)
