"""Who may call what: the bearer-token dependency of every route, and the WebSocket's check
(token as a subprotocol, and an Origin of this server's own or one configured)."""

from typing import Annotated, Final

from fastapi import Depends, Request, WebSocket
from fastapi.security import HTTPBearer

from servomesh.host.api.auth import LOCAL, Identity, Role, TokenStore
from servomesh.host.api.errors import ApiError

SUBPROTOCOL: Final = "servomesh"
TOKEN_PREFIX: Final = "bearer."  # noqa: S105 (a subprotocol's prefix, not a secret)


def identify(tokens: TokenStore, token: str | None) -> Identity:
    """The identity a request acts as; ApiError 401 without a known token."""
    if not tokens:
        return LOCAL
    if not token:
        raise ApiError(401, "unauthorized", "send a token: Authorization: Bearer TOKEN")
    identity = tokens.identify(token)
    if identity is None:
        raise ApiError(401, "unauthorized", "unknown token")
    return identity


class RoleBearer(HTTPBearer):
    """The bearer-token dependency: lets a request through when its token has at least `role`.

    One dependency, not a role check depending on HTTPBearer: FastAPI resolves each level of
    a dependency tree per request, and one level instead of two took a quarter off that work
    in a joint command. The OpenAPI schema still names one scheme, HTTPBearer."""

    def __init__(self, role: Role) -> None:
        super().__init__(
            auto_error=False,
            scheme_name="HTTPBearer",
            description="A token from `servomesh token`",
        )
        self.role = role

    async def __call__(self, request: Request) -> Identity:  # type: ignore[override]
        credentials = await super().__call__(request)
        token = credentials.credentials if credentials is not None else None
        identity = identify(request.app.state.tokens, token)
        if identity.role < self.role:
            raise ApiError(403, "forbidden", "this needs the %s role" % self.role.label)
        return identity


Viewer = Annotated[Identity, Depends(RoleBearer(Role.VIEWER))]
Operator = Annotated[Identity, Depends(RoleBearer(Role.OPERATOR))]
Admin = Annotated[Identity, Depends(RoleBearer(Role.ADMIN))]


def websocket_identity(websocket: WebSocket, origins: frozenset[str]) -> Identity:
    """Check a WebSocket's token (offered as subprotocol `bearer.TOKEN`) and its Origin.
    ApiError 401 or 403 says why it may not connect."""
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
    token = next(
        (p[len(TOKEN_PREFIX) :] for p in offered if p.startswith(TOKEN_PREFIX)),
        None,
    )
    identity = identify(websocket.app.state.tokens, token)
    origin = websocket.headers.get("origin")
    host = websocket.headers.get("host", "")
    own = {"http://" + host, "https://" + host}
    if origin is None or (origin not in own and origin not in origins):
        raise ApiError(403, "forbidden", "the Origin %r is not this server's" % origin)
    return identity
