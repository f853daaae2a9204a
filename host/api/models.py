"""The API's request and response bodies (docs/api.md, section 3), with examples for the
OpenAPI document. Requests refuse unknown fields: a typo is an error, never ignored."""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from servomesh.host.fleet import Fleet

Degrees = Annotated[float, Field(ge=-3600, le=3600, allow_inf_nan=False)]  # joints say the rest
DurationMs = Annotated[int, Field(ge=0, le=60_000)]
JointName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JointCommand(_Request):
    """Move one joint: over `ms`, at `speed_deg_per_s`, or (neither) at its configured speed."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"deg": 45, "ms": 400}]}
    )

    deg: Degrees
    ms: DurationMs | None = None
    speed_deg_per_s: Annotated[float, Field(gt=0, le=100_000, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _one_pace(self) -> "JointCommand":
        if self.ms is not None and self.speed_deg_per_s is not None:
            raise ValueError("give ms or speed_deg_per_s, not both")
        return self


class MoveRequest(_Request):
    """Many joints, across nodes, with one synchronized start."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"targets": {"elbow": 45, "wrist_pitch": -10}, "duration_ms": 400}]
        },
    )

    targets: Annotated[dict[JointName, Degrees], Field(min_length=1, max_length=256)]
    duration_ms: DurationMs = 0


class GoRequest(_Request):
    duration_ms: DurationMs = 1000


class PlayRequest(_Request):
    lead_in_ms: Annotated[int, Field(ge=0, le=10_000)] = 500


class StopRequest(_Request):
    release: bool = False


class PoseBody(_Request):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"joints": {"elbow": 10, "wrist_roll": 0}}]}
    )

    joints: Annotated[dict[JointName, Degrees], Field(min_length=1, max_length=256)]


class Command(BaseModel):
    """A command the fleet took; its trace id is in the operation log and the nodes' records."""

    trace_id: int = Field(examples=[42001])
    action: str = Field(examples=["move"])


class Node(BaseModel):
    name: str
    link: str = Field(examples=["udp://192.168.1.40:5683"])
    state: str = Field(examples=["ready"])
    why: str
    node_id: str | None
    firmware: str | None
    boot_id: int | None
    rtt_ms: float | None
    clock_offset_us: int | None
    clock_uncertainty_us: int | None
    requests: int
    retries: int
    keepalives: int
    timeouts: int
    reconnects: int
    reboots: int
    refused: dict[str, int]
    rejected: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def of(cls, row: dict[str, Any]) -> "Node":
        """From a row of `Fleet.nodes()`."""
        return cls.model_validate(row)


class Joint(BaseModel):
    name: str
    node: str
    channel: int
    min_deg: float
    max_deg: float
    home_deg: float
    target_deg: float | None
    position_deg: float | None
    moving: bool
    released: bool
    updated_s: float | None

    @classmethod
    def of(cls, fleet: Fleet, name: str) -> "Joint":
        """Joint `name` of `fleet`: its config and its last reported state."""
        joint = fleet.joint(name)
        state = fleet.joint_state(name)
        return cls(
            name=name,
            node=joint.node,
            channel=joint.channel,
            min_deg=joint.min_deg,
            max_deg=joint.max_deg,
            home_deg=joint.home_deg,
            target_deg=state.target_deg,
            position_deg=state.position_deg,
            moving=state.moving,
            released=state.released,
            updated_s=state.updated_s,
        )


class Pose(BaseModel):
    name: str
    joints: dict[str, float]
    saved: bool = Field(description="saved through the API (false: from the fleet config)")


class Sequence(BaseModel):
    name: str
    keyframes: int
    duration_ms: int
    loop: bool


class Status(BaseModel):
    stopped: bool
    playing: str | None


class SequenceStopped(BaseModel):
    stopped: bool = Field(description="whether a sequence was playing")


class Operation(BaseModel):
    id: int | None
    time_s: float
    source: str
    action: str
    joints: dict[str, float]
    trace_id: int
    result: str
    latency_ms: float
    detail: str


class LogPage(BaseModel):
    entries: list[Operation]
    next_before_id: int | None = Field(description="pass as before_id for the next page")


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    ready: bool
    not_ready: dict[str, str] = Field(description="node name -> why it is not ready")
