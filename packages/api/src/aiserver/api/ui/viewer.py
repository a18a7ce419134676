"""Who is looking at a dashboard page, and which project they may see.

The `signed_in` guard finds the request's session and checks its credential again (a revoked
key or a removed operator token ends it); a request without one is sent to the sign-in page.
`open_project` then gives the project of a page's URL, by the ledger's own rule: a key sees its
own project only (another is "no such project", exactly as one that does not exist); the
operator sees every project, with every scope of a key of it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from litestar import Controller, Request
from litestar.connection import ASGIConnection
from litestar.datastructures import FormMultiDict
from litestar.handlers.base import BaseRouteHandler

from aiserver.api.errors import CsrfRefused
from aiserver.api.settings import ApiSettings
from aiserver.api.ui.sessions import COOKIE, PROJECT, Session, Sessions, Signer, same
from aiserver.core_db.database import require_pool
from aiserver.ledger.access import Access
from aiserver.ledger.errors import KeyRejected, ProjectArchived
from aiserver.ledger.keys import SCOPES
from aiserver.ledger.projects import find_project
from aiserver.ledger.text import bidi_closed

if TYPE_CHECKING:
    from litestar import Litestar

    from aiserver.ledger.authentication import Keyring
    from aiserver.ledger.store import Project

AnyConnection = ASGIConnection[Any, Any, Any, Any]

#: Where the dashboard's router keeps its `Dashboard` (in its handlers' `opt`).
OPT: Final = "dashboard"


class SignInNeeded(Exception):
    """No session, or one that has ended: the page answers with the sign-in form."""


@dataclass(frozen=True, slots=True)
class Dashboard:
    """What every dashboard request shares: the signer of its cookies and the session length."""

    signer: Signer
    session_seconds: int

    def sessions(self, app: Litestar) -> Sessions:
        return Sessions(app.state.redis, self.signer, self.session_seconds)


def dashboard(connection: AnyConnection) -> Dashboard:
    found: Dashboard = connection.route_handler.opt[OPT]
    return found


def _said_for(kind: str, project_id: int) -> bytes:
    """What a page's message of `kind` about a project is signed for: the kind and the project,
    so that a message of one project's page says nothing on another's."""
    return f"{kind}:{project_id}".encode()


def said(connection: AnyConnection, kind: str, project_id: int, text: str) -> dict[str, str]:
    """The query parameter (`?<kind>=...`) that has the page the browser is sent to next say
    `text` about the project: signed here, so that no link makes it say anything else."""
    return {kind: dashboard(connection).signer.sign(text, _said_for(kind, project_id))}


def heard(connection: AnyConnection, kind: str, project_id: int) -> str | None:
    """The text of the request's `?<kind>=` message (`said`), when this server signed it for
    this project; None for none, or for one that it did not sign so."""
    signed = connection.query_params.get(kind)
    return (
        dashboard(connection).signer.unsign(signed, _said_for(kind, project_id)) if signed else None
    )


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in session and the access it gives now."""

    session: Session
    access: Access

    @property
    def who(self) -> str:
        """How the page names who signed in: a key by its name and its public id (not a secret),
        or the operator. The name's bidirectional runs closed (`bidi_closed`): it stands in a
        sentence."""
        if self.access.is_operator:
            return "operator (all projects)"
        name = self.session.key_name
        named = f"the key “{bidi_closed(name)}” " if name else "key "
        return f"{named}{self.session.public_id} of {self.access.project_slug}"


async def _recheck(connection: AnyConnection, session: Session, signer: Signer) -> Access:
    if session.kind == "key" and session.public_id is not None and session.key_id is not None:
        keyring: Keyring = connection.app.state.keyring
        return await keyring.recheck(require_pool(), session.public_id, session.key_id)
    settings: ApiSettings = connection.app.state.settings
    presented = session.operator or ""
    if session.kind == "operator" and any(
        hmac.compare_digest(presented, signer.fingerprint(token))
        for token in settings.api_admin_tokens
    ):
        return Access.operator()
    raise KeyRejected("the token this session was made with is no longer accepted")


async def signed_in(connection: AnyConnection, _: BaseRouteHandler) -> None:
    """Guard of every page behind the sign-in: the session's viewer, kept as `viewer`."""
    board = dashboard(connection)
    sessions = board.sessions(connection.app)
    cookie = connection.cookies.get(COOKIE)
    session = await sessions.find(cookie)
    if session is None:
        raise SignInNeeded("sign in to see this page")
    try:
        access = await _recheck(connection, session, board.signer)
    except (KeyRejected, ProjectArchived) as exc:
        await sessions.end(cookie)
        raise SignInNeeded(f"the session has ended: {exc}") from None
    connection.state.viewer = Viewer(session=session, access=access)


def viewer(connection: AnyConnection) -> Viewer:
    """The request's viewer, as `signed_in` found it."""
    found: Viewer = connection.state.viewer
    return found


async def open_project(seen_by: Viewer, slug: str) -> tuple[Project, Access]:
    """The project `slug` and the access to it: a key's own, or the operator's with every scope;
    `UnknownProject` for a project the viewer does not reach."""
    async with require_pool().acquire() as conn:
        project = await find_project(conn, seen_by.access, slug)
    if seen_by.access.is_operator:
        return project, Access(
            project_id=project.id, project_slug=project.slug, scopes=frozenset(SCOPES)
        )
    return project, seen_by.access


async def checked_form(request: Request[Any, Any, Any]) -> FormMultiDict:
    """The body of a form that changes something, once it proved it came from this session's
    pages (its CSRF token); `CsrfRefused` otherwise."""
    form = await request.form()
    if not same(form.get("csrf_token"), viewer(request).session.csrf):
        raise CsrfRefused("the form did not come from this session's pages (no valid CSRF token)")
    return form


class ProjectPages(Controller):
    """The pages of one project, at PROJECT/<slug>/..., for a signed-in viewer that reaches it
    (`open_project`)."""

    path = PROJECT + "/{slug:str}"
    include_in_schema = False
    guards = (signed_in,)
