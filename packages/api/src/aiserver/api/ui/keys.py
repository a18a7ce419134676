"""Keys (a key with `admin`, or the operator): the project's keys; a new key, whose secret the
page shows this once (never in a URL); revoking one, which ends its dashboard sessions too.

The keys are the ledger's (`aiserver.ledger.api_keys`), as `/v1/projects/{slug}/keys` serves
them: a listed key never shows its secret, nor its hash.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Request, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template

from aiserver.api.ui.sessions import PROJECT
from aiserver.api.ui.viewer import ProjectPages, checked_form, open_project, viewer
from aiserver.core_db.database import require_pool
from aiserver.ledger import api_keys
from aiserver.ledger.errors import InvalidField
from aiserver.ledger.keys import SCOPES
from aiserver.ledger.usage.reading import parse_time

AnyRequest = Request[Any, Any, Any]


class KeyPages(ProjectPages):
    async def _page(
        self, request: AnyRequest, slug: str, *, made: str | None = None,
        error: str | None = None, status: int = 200,
    ) -> Template:  # fmt: skip
        seen_by = viewer(request)
        project, access = await open_project(seen_by, slug)
        return Template(
            template_name="keys.html",
            status_code=status,
            context={
                "viewer": seen_by, "project": project, "page": "keys",
                "keys": await api_keys.list_keys(require_pool(), access, project.slug),
                "scopes": SCOPES, "made": made, "error": error,
                "now": datetime.now(UTC),
            },
        )  # fmt: skip

    @get("/keys")
    async def keys(self, request: AnyRequest, slug: FromPath[str]) -> Template:
        return await self._page(request, slug)

    @post("/keys", status_code=201)
    async def create(self, request: AnyRequest, slug: FromPath[str]) -> Template:
        form = await checked_form(request)
        project, access = await open_project(viewer(request), slug)
        expires = str(form.get("expires_at") or "").strip()
        try:
            created = await api_keys.create_key(
                require_pool(), access, project.slug,
                name=str(form.get("name") or "").strip(),
                scopes=[str(s) for s in form.getall("scopes", [])],
                expires_at=parse_time(expires, "expires_at") if expires else None,
            )  # fmt: skip
        except InvalidField as exc:
            return await self._page(request, slug, error=str(exc), status=422)
        return await self._page(request, slug, made=created.text, status=201)

    @post("/keys/{key_id:int}/revoke", status_code=303)
    async def revoke(
        self, request: AnyRequest, slug: FromPath[str], key_id: FromPath[int]
    ) -> Redirect:
        await checked_form(request)
        project, access = await open_project(viewer(request), slug)
        await api_keys.revoke_key(require_pool(), access, key_id, keyring=request.app.state.keyring)
        return Redirect(f"{PROJECT}/{project.slug}/keys", status_code=303)
