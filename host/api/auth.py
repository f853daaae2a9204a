"""Bearer tokens with roles, stored as SHA-256 hashes in a TOML file (docs/api.md, section 1).

    [[token]]
    name = "ci"
    role = "operator"
    sha256 = "<64 hex digits>"

A presented token is hashed and compared in constant time against every stored hash, so
neither a match's position nor a near miss shows in the time taken. Tokens are never logged.
"""

import enum
import hashlib
import hmac
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

TOKEN_BYTES: Final = 32  # of randomness in a generated token
_HEX_DIGITS: Final = frozenset("0123456789abcdef")


class Role(enum.IntEnum):
    """Each role may do what the roles below it may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class TokenFileError(ValueError):
    """The tokens file is missing or invalid; the message names the file and the entry."""


@dataclass(frozen=True)
class Identity:
    """Who a request acts as: a token's name and role (`local` when the server has none)."""

    name: str
    role: Role


LOCAL: Final = Identity("local", Role.ADMIN)  # loopback without tokens: a desk setup


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class _Entry:
    name: str
    role: Role
    digest: bytes


class TokenStore:
    """The tokens a server accepts. Empty: no tokens configured."""

    def __init__(self, entries: list[_Entry] | None = None) -> None:
        self._entries = list(entries or [])

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TokenStore":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as error:
            raise TokenFileError("%s: %s" % (path, error.strerror)) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise TokenFileError("%s: not TOML: %s" % (path, error)) from None
        unknown = set(data) - {"token"}
        if unknown:
            raise TokenFileError("%s: unknown key %s (only [[token]])" % (path, min(unknown)))
        tokens = data.get("token", [])
        if not isinstance(tokens, list):
            raise TokenFileError("%s: token: must be an array of tables, [[token]]" % path)
        entries = [_parse_entry(path, i, item) for i, item in enumerate(tokens)]
        names = [entry.name for entry in entries]
        for name in names:
            if names.count(name) > 1:
                raise TokenFileError("%s: token name %r is used twice" % (path, name))
        return cls(entries)

    def identify(self, token: str) -> Identity | None:
        """The identity of `token`, or None. Every stored hash is compared, always."""
        presented = _digest(token)
        found = None
        for entry in self._entries:
            if hmac.compare_digest(presented, entry.digest):
                found = entry
        return Identity(found.name, found.role) if found is not None else None


def _parse_entry(path: Path, index: int, item: object) -> _Entry:
    where = "%s: token[%d]" % (path, index)
    if not isinstance(item, dict):
        raise TokenFileError("%s: must be a table" % where)
    unknown = set(item) - {"name", "role", "sha256"}
    if unknown:
        raise TokenFileError(
            "%s.%s: unknown key (keys: name, role, sha256)" % (where, min(unknown))
        )
    name, role, digest = item.get("name"), item.get("role"), item.get("sha256")
    if not isinstance(name, str) or not name.strip():
        raise TokenFileError("%s.name: required, a non-empty string" % where)
    roles = [r.label for r in Role]
    if role not in roles:
        raise TokenFileError("%s.role: must be one of %s" % (where, ", ".join(roles)))
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX_DIGITS:
        raise TokenFileError("%s.sha256: must be 64 lowercase hex digits" % where)
    return _Entry(name, Role[role.upper()], bytes.fromhex(digest))


def new_token(path: str | os.PathLike[str], name: str, role: Role) -> str:
    """Append a new random token for `name` with `role` to the tokens file (created 0600,
    readable by its owner only) and return the token: the only time it is seen."""
    path = Path(path)
    store = TokenStore.load(path) if path.exists() else TokenStore()
    if any(entry.name == name for entry in store._entries):
        raise TokenFileError("%s: a token named %r exists already" % (path, name))
    if not name.strip() or '"' in name or "\\" in name or "\n" in name:
        raise TokenFileError("token name %r: use letters, digits, spaces, - and _" % name)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    entry = '\n[[token]]\nname = "%s"\nrole = "%s"\nsha256 = "%s"\n' % (
        name,
        role.label,
        _digest(token).hex(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as out:
        out.write(entry)
    return token
