"""Keys (a key with `admin`, or the operator): the project's keys; a new key, whose secret the
page shows this once (never in a URL); revoking one, which ends its dashboard sessions too.

Revoking asks first: a key's Revoke button leads to a page that names the key and what revoking
it does, whose own form revokes it; the list then says which key was revoked (a message signed
here, so that no link can make the page say something else).

Each new-key form carries a token of its own: sent again (the browser's refresh of the page
that shows a new key), it makes no second key, and the page names the key it made.

The keys are the ledger's (`aiserver.ledger.api_keys`), as `/v1/projects/{slug}/keys` serves
them: a listed key never shows its secret, nor its hash.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Final

from litestar import Request, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template

from aiserver.api.ui.forms import text, texts, wall_time
from aiserver.api.ui.sessions import PROJECT, new_token
from aiserver.api.ui.viewer import ProjectPages, checked_form, heard, open_project, said, viewer
from aiserver.core_db.database import require_pool
from aiserver.ledger import api_keys
from aiserver.ledger.api_keys import FormSentAgain
from aiserver.ledger.errors import InvalidField, UnknownKey
from aiserver.ledger.keys import SCOPES
from aiserver.ledger.spend.query import project_zone
from aiserver.ledger.store import ApiKey

AnyRequest = Request[Any, Any, Any]

#: What `new_token` makes (and a little room): anything else in the field is no form token.
_FORM_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{20,100}")


def _form_token(value: object) -> str | None:
    """The new-key form's token; None for a form without one (a page from before tokens)."""
    return value if isinstance(value, str) and _FORM_TOKEN.fullmatch(value) else None


def _revoked(request: AnyRequest, project_id: int) -> tuple[str, str] | None:
    """The key a `?revoked=` names (its public id and name), when this server signed it for
    this project (`heard`); None otherwise."""
    public_id, space, name = (heard(request, "revoked", project_id) or "").partition(" ")
    return (public_id, name) if space else None


class KeyPages(ProjectPages):
    async def _page(
        self, request: AnyRequest, slug: str, *, made: str | None = None,
        sent_again: ApiKey | None = None, error: str | None = None, status: int = 200,
        confirm_revoke: int | None = None,
    ) -> Template:  # fmt: skip
        seen_by = viewer(request)
        project, access = await open_project(seen_by, slug)
        keys = await api_keys.list_keys(require_pool(), access, project.slug)
        asked = None
        if confirm_revoke is not None:
            asked = next((k for k in keys if k.id == confirm_revoke), None)
            if asked is None:
                raise UnknownKey(f"no key {confirm_revoke}")
        return Template(
            template_name="keys.html",
            status_code=status,
            context={
                "viewer": seen_by, "project": project, "page": "keys", "keys": keys,
                "scopes": SCOPES, "made": made, "sent_again": sent_again, "error": error,
                "now": datetime.now(UTC), "form_token": new_token(), "confirm_revoke": asked,
                "revoked": _revoked(request, project.id) if confirm_revoke is None else None,
            },
        )  # fmt: skip

    @get("/keys")
    async def keys(self, request: AnyRequest, slug: FromPath[str]) -> Template:
        return await self._page(request, slug)

    @get("/keys/{key_id:int}/revoke")
    async def confirm_revoke(
        self, request: AnyRequest, slug: FromPath[str], key_id: FromPath[int]
    ) -> Template:
        """Asks before revoking: the key, and what revoking it does."""
        return await self._page(request, slug, confirm_revoke=key_id)

    @post("/keys", status_code=201)
    async def create(self, request: AnyRequest, slug: FromPath[str]) -> Template:
        form = await checked_form(request)
        project, access = await open_project(viewer(request), slug)
        try:
            created = await api_keys.create_key(
                require_pool(), access, project.slug,
                name=text(form, "name"),
                scopes=texts(form, "scopes"),
                # as the other pages read a time typed in a form: without an offset (a date
                # alone: its midnight) on the project's clock
                expires_at=wall_time(text(form, "expires_at"), "expires_at",
                                     project_zone(project)),
                form_token=_form_token(form.get("form_token")),
            )  # fmt: skip
        except InvalidField as exc:
            return await self._page(request, slug, error=str(exc), status=422)
        except FormSentAgain as again:
            return await self._page(request, slug, sent_again=again.key)
        return await self._page(request, slug, made=created.text, status=201)

    @post("/keys/{key_id:int}/revoke", status_code=303)
    async def revoke(
        self, request: AnyRequest, slug: FromPath[str], key_id: FromPath[int]
    ) -> Redirect:
        await checked_form(request)
        project, access = await open_project(viewer(request), slug)
        key = await api_keys.revoke_key(
            require_pool(), access, key_id, keyring=request.app.state.keyring
        )
        return Redirect(
            f"{PROJECT}/{project.slug}/keys",
            query_params=said(request, "revoked", project.id, f"{key.public_id} {key.name}"),
            status_code=303,
        )
