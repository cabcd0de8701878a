"""Who may change state: the token, the console's session cookie, and the Origin check.

Scripts send ``Authorization: Bearer <token>``. A person logs in once with the token in the console's
form, which sets an HttpOnly, SameSite=Strict cookie holding an HMAC of the token (never the token
itself; changing the token ends every session). A request that rides on the cookie must also come from
the console's own origin (``Origin``, else ``Referer``): SameSite alone does not stop another port on
the same host, which browsers count as the same site. STOW-RS takes the bearer token only.

Read-only pages need nothing: they show no PHI (unless ``http.show_phi``) and the server listens on
loopback unless told otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from starlette.requests import Request

from samie_node.config import HttpSettings
from samie_node.errors import ConfigError

SESSION_COOKIE = "samie_session"

Credential = Literal["bearer", "session"]


@dataclass(frozen=True)
class Refusal:
    """Why a request may not change state, and the HTTP status that says so."""

    status: int
    reason: str


def load_token(settings: HttpSettings) -> str | None:
    """The configured token (``http.token`` or the first line of ``http.token_file``), or None.

    Raises
    ------
    ConfigError
        If the token file cannot be read or holds a token shorter than 16 characters.
    """
    if settings.token_file is None:
        return settings.token
    try:
        token = settings.token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read http.token_file {settings.token_file}: {exc.strerror or exc}") from exc
    if len(token) < 16:
        raise ConfigError(f"the token in {settings.token_file} is shorter than 16 characters")
    return token


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


class Guard:
    """Checks the credentials and origin of requests that change state."""

    def __init__(self, token: str | None) -> None:
        self._token = token
        self._session = (
            hmac.new(token.encode("utf-8"), b"samie-node console session", hashlib.sha256).hexdigest()
            if token
            else None
        )

    @property
    def configured(self) -> bool:
        """Whether a token is configured (without one, every action and STOW-RS is refused)."""
        return self._token is not None

    @property
    def session_value(self) -> str:
        """The cookie value a successful login sets."""
        if self._session is None:
            raise ConfigError("no http token configured")
        return self._session

    def token_matches(self, candidate: str) -> bool:
        """Whether ``candidate`` is the token (constant time)."""
        return self._token is not None and hmac.compare_digest(candidate.encode("utf-8"), self._token.encode("utf-8"))

    def credential(self, request: Request, *, allow_session: bool = True) -> Credential | None:
        """How the request proves it holds the token, or None."""
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer " and self.token_matches(header[7:].strip()):
            return "bearer"
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if allow_session and self._session is not None and hmac.compare_digest(cookie, self._session):
            return "session"
        return None

    def same_origin(self, request: Request) -> bool:
        """Whether the request's Origin (or Referer) is the console's own origin."""
        claimed = request.headers.get("origin") or _origin(request.headers.get("referer", ""))
        own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
        return claimed.lower() == own

    def check(self, request: Request, *, allow_session: bool = True) -> Refusal | None:
        """None when the request may change state, else the refusal to answer with.

        A request with an Origin header must come from the console's origin whatever its credential; one
        that rides on the session cookie must name an origin at all.
        """
        if not self.configured:
            return Refusal(403, "no http token is configured (http.token or http.token_file)")
        credential = self.credential(request, allow_session=allow_session)
        if credential is None:
            return Refusal(401, "a valid token is needed (Authorization: Bearer, or log in)")
        has_origin = bool(request.headers.get("origin") or request.headers.get("referer"))
        if (credential == "session" or has_origin) and not self.same_origin(request):
            return Refusal(403, "cross-origin request refused")
        return None
