"""Signing in and out, and the first page after it (a key's project, or the operator's picker).

The credential comes in a form's body (POST), never in a URL; it is checked as every API request
checks it (`aiserver.api.auth`), and is forgotten once the session is made. Nothing here logs it,
and no page shows it. Every credential refused as not valid counts as a failed attempt of the
client's address; an address that must wait (`aiserver.api.attempts`) gets the form
again with a 429 and Retry-After, and its credential is not checked.
"""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any, Final

from litestar import Controller, Request, get, post
from litestar.datastructures import Cookie
from litestar.response import Redirect, Template

from aiserver.api.auth import attempt_failed, attempt_wait, token_matches
from aiserver.api.errors import TooManyFailures
from aiserver.api.settings import ApiSettings
from aiserver.api.ui.forms import text
from aiserver.api.ui.overview import months
from aiserver.api.ui.present import SHOW
from aiserver.api.ui.sessions import (
    COOKIE,
    PATH,
    PROJECT,
    SIGN_IN_COOKIE,
    SIGN_IN_PURPOSE,
    SIGN_IN_SECONDS,
    back_to,
    new_token,
    same,
)
from aiserver.api.ui.viewer import checked_form, dashboard, signed_in, viewer
from aiserver.core_db.database import require_pool
from aiserver.core_db.errors import AiserverError
from aiserver.core_db.logging import get_logger
from aiserver.costs.pricing.exact import ADD, ZERO
from aiserver.ledger.authentication import Keyring
from aiserver.ledger.errors import InvalidField, KeyRejected
from aiserver.ledger.keys import looks_like_key, parse_key
from aiserver.ledger.projects import list_projects
from aiserver.ledger.store import read_key

AnyRequest = Request[Any, Any, Any]

#: The projects whose spend the operator's list shows (the rest: open them).
SPEND_LISTED: Final = 50

log = get_logger(__name__)


def cookie(request: AnyRequest, key: str, value: str, max_age: int) -> Cookie:
    """A dashboard cookie: HttpOnly, SameSite=Strict, for /ui only, Secure over TLS."""
    return Cookie(
        key=key, value=value, path=PATH, max_age=max_age, httponly=True,
        secure=request.url.scheme == "https", samesite="strict",
    )  # fmt: skip


def _form(
    request: AnyRequest, error: str | None = None, *, status: int = 200,
    headers: dict[str, str] | None = None, then: str | None = None,
) -> Template:  # fmt: skip
    """The sign-in form, with a fresh CSRF token bound to a cookie of its own, and the page to
    go to once signed in (`then`, checked by `back_to`), which the form sends back."""
    nonce = new_token()
    signed = dashboard(request).signer.sign(nonce, SIGN_IN_PURPOSE)
    return Template(
        template_name="sign_in.html",
        context={"csrf": nonce, "error": error, "then": back_to(then)},
        status_code=status,
        headers=headers,
        cookies=[cookie(request, SIGN_IN_COOKIE, signed, SIGN_IN_SECONDS)],
    )


async def _refused(request: AnyRequest, exc: AiserverError, then: str | None) -> Template:
    """The form again, saying why the credential signed nobody in; one not valid (401) is a
    failed attempt of the client's address."""
    if isinstance(exc, KeyRejected):
        verdict = await attempt_failed(request)
        if not verdict.counted:  # the limit was reached meanwhile, by attempts sent at once
            exc = TooManyFailures(verdict.wait)
    retry = exc.headers().get("Retry-After")  # a 429's: not a 401's WWW-Authenticate
    return _form(
        request, f"Not signed in: {exc.problem()['detail']}.", status=exc.status,
        headers={"Retry-After": retry} if retry else None, then=then,
    )  # fmt: skip


class SignInController(Controller):
    path = PATH
    include_in_schema = False

    @get("/sign-in")
    async def sign_in_form(self, request: AnyRequest) -> Template:
        return _form(request, then=request.query_params.get("next"))

    @post("/sign-in", status_code=303)
    async def sign_in(self, request: AnyRequest) -> Template | Redirect:
        form = await request.form()
        then = back_to(form.get("next"))
        board = dashboard(request)
        expected = board.signer.unsign(request.cookies.get(SIGN_IN_COOKIE), SIGN_IN_PURPOSE)
        if expected is None or not same(form.get("csrf_token"), expected):
            return _form(
                request, "The form had expired or did not come from this page: try again.",
                status=403, then=then,
            )  # fmt: skip
        wait = await attempt_wait(request)
        if wait:
            return await _refused(request, TooManyFailures(wait), then)
        try:
            credential = text(form, "credential")
        except InvalidField as exc:  # a file: no credential to check, no attempt to count
            return _form(request, f"Not signed in: {exc}.", status=exc.status, then=then)
        sessions = board.sessions(request.app)
        if looks_like_key(credential):
            keyring: Keyring = request.app.state.keyring
            try:
                access = await keyring.authenticate(require_pool(), credential)
                access.require("read")
            except AiserverError as exc:
                return await _refused(request, exc, then)
            presented = parse_key(credential)
            assert presented is not None  # authenticate parsed it
            async with require_pool().acquire() as conn:  # its name, for the page's header
                key = await read_key(conn, access.key_id) if access.key_id else None
            made, _ = await sessions.start(
                "key",
                public_id=presented.public_id,
                key_id=access.key_id,
                key_name=key.name if key is not None else None,
            )
            log.info("dashboard sign-in", key=presented.public_id, project=access.project_slug)
        else:
            settings: ApiSettings = request.app.state.settings
            if not credential or not token_matches(credential, settings.api_admin_tokens):
                return await _refused(request, KeyRejected("the key or token is not valid"), then)
            made, _ = await sessions.start(
                "operator", operator=board.signer.fingerprint(credential)
            )
            log.info("dashboard sign-in", operator=True)
        # the session this browser had, if any, ends: its cookie is replaced, and a copy of it
        # must not stay good until it expires
        await sessions.end(request.cookies.get(COOKIE))
        return Redirect(
            then or f"{PATH}/",  # the page that sent here (a page of another project: a 404)
            status_code=303,
            cookies=[
                cookie(request, COOKIE, made, board.session_seconds),
                cookie(request, SIGN_IN_COOKIE, "", 0),
            ],
        )

    @post("/sign-out", guards=[signed_in], status_code=303)
    async def sign_out(self, request: AnyRequest) -> Redirect:
        await checked_form(request)
        await dashboard(request).sessions(request.app).end(request.cookies.get(COOKIE))
        session = viewer(request).session
        log.info("dashboard sign-out", key=session.public_id, operator=session.kind == "operator")
        return Redirect(
            f"{PATH}/sign-in", status_code=303, cookies=[cookie(request, COOKIE, "", 0)]
        )

    @get("/", guards=[signed_in])
    async def home(self, request: AnyRequest) -> Template | Redirect:
        """A key's project overview; the operator picks a project first."""
        seen_by = viewer(request)
        if not seen_by.access.is_operator:
            return Redirect(f"{PROJECT}/{seen_by.access.project_slug}/", status_code=303)
        pool = require_pool()
        projects = await list_projects(pool, seen_by.access)
        # what each spent this month and last, on its own clock (the first SPEND_LISTED only: a
        # few rollup reads each)
        spent = [await months(pool, p) for p in projects[:SPEND_LISTED]]
        # the server's total of each column (exact), whether it is a lower bound, and whether
        # every event it counts is unpriced (its 0 is no price: shown as `unpriced`)
        totals = [
            (
                functools.reduce(ADD, (Decimal(row[i]["total"].cost) for row in spent), ZERO),
                any(row[i]["total"].lower_bound for row in spent),
                sum(row[i]["total"].events for row in spent)
                == sum(row[i]["total"].unpriced_events for row in spent)
                > 0,
            )
            for i in range(2)
        ]
        # each column's scale: its figures' points line up (the blanks of the decimals a
        # figure lacks are drawn, not written)
        places = [
            SHOW.places([*(row[i]["total"].cost for row in spent), totals[i][0]]) for i in range(2)
        ]
        return Template(
            template_name="projects.html",
            context={
                "viewer": seen_by, "projects": projects, "project": None, "page": "projects",
                "spent": spent, "totals": totals, "places": places, "listed": SPEND_LISTED,
                "show": SHOW,
            },
        )  # fmt: skip
