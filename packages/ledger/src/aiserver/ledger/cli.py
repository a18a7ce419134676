"""`aiserver-ledger`: projects and their API keys, straight against the database.

An operator bootstraps with it: no HTTP, no token; whoever can reach the database (DATABASE_URL)
acts as the operator. Each command imports what it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from aiserver.core_db.commands import run_command, timestamp
from aiserver.core_db.settings import CoreSettings, settings_for_command
from aiserver.ledger.keys import SCOPES

if TYPE_CHECKING:
    from aiserver.ledger.store import ApiKey, Project

Command = Callable[[CoreSettings, argparse.Namespace], Coroutine[Any, Any, int]]


def _print_json(value: Any) -> None:
    import msgspec

    print(msgspec.json.encode(value).decode())


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else "-"


def _project_lines(project: Project) -> list[str]:
    tags = ", ".join(project.rollup_tags) or "-"
    state = f"archived {_when(project.archived_at)}" if project.archived_at else "active"
    return [
        f"project:      {project.slug} ({project.name})",
        f"time zone:    {project.time_zone}",
        f"rollup tags:  {tags}",
        f"created:      {_when(project.created_at)}; {state}",
    ]


def _key_line(key: ApiKey) -> str:
    state = "revoked" if key.revoked_at else "active"
    if key.expires_at and not key.revoked_at and key.expires_at <= datetime.now(UTC):
        state = "expired"
    return (
        f"{key.id:>6}  ais_{key.public_id}_…  {','.join(key.scopes):<18} {state:<8} "
        f"expires {_when(key.expires_at):<20} last used {_when(key.last_used_at):<20} {key.name}"
    )


async def _with_pool(core: CoreSettings, work: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    from aiserver.core_db.database import database, require_pool

    async with database(core):
        return await work(require_pool())


async def _projects_create(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        project = await projects.create_project(
            pool, Access.operator(), slug=args.slug, name=args.name or args.slug,
            time_zone=args.time_zone, rollup_tags=args.rollup_tag,
        )  # fmt: skip
        _print_json(project) if args.json else print("\n".join(_project_lines(project)))
        return 0

    return await _with_pool(core, work)


async def _projects_list(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        found = await projects.list_projects(pool, Access.operator(), archived=args.archived)
        if args.json:
            _print_json(found)
        else:
            for project in found:
                archived = "  (archived)" if project.archived_at else ""
                print(f"{project.slug:<32} {project.time_zone:<20} {project.name}{archived}")
            print(f"{len(found)} project(s)")
        return 0

    return await _with_pool(core, work)


async def _projects_show(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import api_keys, projects
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        project = await projects.show_project(pool, Access.operator(), args.slug)
        keys = await api_keys.list_keys(pool, Access.operator(), args.slug)
        if args.json:
            _print_json({"project": project, "keys": keys})
        else:
            print("\n".join(_project_lines(project)))
            active = sum(1 for k in keys if not k.revoked_at)
            print(f"keys:         {active} active, {len(keys)} in all")
        return 0

    return await _with_pool(core, work)


async def _keys_create(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import api_keys
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        created = await api_keys.create_key(
            pool, Access.operator(), args.project, name=args.name,
            scopes=args.scope or list(SCOPES), expires_at=args.expires_at,
        )  # fmt: skip
        if args.json:
            _print_json({"key": created.text, **_key_dict(created.key)})
        else:
            print(created.text)
            print(
                f"key {created.key.id} of {created.key.project} ({', '.join(created.key.scopes)}): "
                "shown this once; keep it in your secret store",
                file=sys.stderr,
            )
        return 0

    return await _with_pool(core, work)


def _key_dict(key: ApiKey) -> dict[str, Any]:
    import msgspec

    return msgspec.structs.asdict(key)


async def _keys_list(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import api_keys
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        keys = await api_keys.list_keys(pool, Access.operator(), args.project)
        if args.json:
            _print_json(keys)
        else:
            for key in keys:
                print(_key_line(key))
            print(f"{len(keys)} key(s)")
        return 0

    return await _with_pool(core, work)


async def _keys_revoke(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import api_keys
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        key = await api_keys.revoke_key(pool, Access.operator(), args.key_id)  # each API
        # process stops accepting it within API_KEY_CACHE_SECONDS
        if args.json:
            _print_json(key)
        else:
            print(f"key {key.id} of {key.project} revoked at {_when(key.revoked_at)}")
        return 0

    return await _with_pool(core, work)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiserver-ledger",
        description="Projects (the ledger's tenants) and their API keys, straight against the "
        "database (DATABASE_URL): whoever runs this acts as the operator.",
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="GROUP")

    projects = groups.add_parser("projects", help="create, list and show projects")
    p_sub = projects.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = p_sub.add_parser(
        "create",
        help="create a project",
        description="Create a project. Its slug names it in URLs: 1 to 64 lower-case letters, "
        "digits and inner hyphens.",
    )
    create.add_argument("slug", metavar="SLUG", help="e.g. acme-search")
    create.add_argument("--name", help="a name for people (default: the slug)")
    create.add_argument(
        "--time-zone",
        default="UTC",
        metavar="TZ",
        help="IANA time zone of its budget periods and spend buckets (default: %(default)s)",
    )
    create.add_argument(
        "--rollup-tag",
        action="append",
        default=[],
        metavar="KEY",
        help="a tag key whose spend is rolled up (up to 4; repeat the option)",
    )
    listing = p_sub.add_parser("list", help="list the projects")
    listing.add_argument("--archived", action="store_true", help="include archived projects")
    show = p_sub.add_parser("show", help="one project and how many keys it has")
    show.add_argument("slug", metavar="SLUG")

    keys = groups.add_parser("keys", help="create, list and revoke a project's API keys")
    k_sub = keys.add_subparsers(dest="command", required=True, metavar="COMMAND")
    k_create = k_sub.add_parser(
        "create",
        help="create a key (printed once on stdout)",
        description="Create an API key of a project and print it on stdout, once: only a hash "
        "of its secret is stored. Scopes: ingest (record usage, reserve budget), read (spend, "
        "events, exports, budget status), admin (the project's keys, budgets, repricing).",
    )
    k_create.add_argument("project", metavar="PROJECT", help="the project's slug")
    k_create.add_argument("--name", required=True, help="what the key is for, e.g. 'search-api'")
    k_create.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        metavar="SCOPE",
        help="ingest, read or admin; repeat the option (default: all three)",
    )
    k_create.add_argument(
        "--expires-at", type=timestamp, metavar="TIME", help="RFC 3339; default: never"
    )
    k_list = k_sub.add_parser("list", help="a project's keys (never their secrets)")
    k_list.add_argument("project", metavar="PROJECT")
    k_revoke = k_sub.add_parser(
        "revoke",
        help="revoke a key",
        description="Revoke a key: every API process refuses it within API_KEY_CACHE_SECONDS.",
    )
    k_revoke.add_argument("key_id", type=int, metavar="KEY_ID", help="the key's id (keys list)")

    for command in (create, listing, show, k_create, k_list, k_revoke):
        command.add_argument("--json", action="store_true", help="print JSON")
    return parser


COMMANDS: Final[dict[tuple[str, str], Command]] = {
    ("projects", "create"): _projects_create,
    ("projects", "list"): _projects_list,
    ("projects", "show"): _projects_show,
    ("keys", "create"): _keys_create,
    ("keys", "list"): _keys_list,
    ("keys", "revoke"): _keys_revoke,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    core = settings_for_command("aiserver-ledger", CoreSettings)
    from aiserver.core_db.logging import configure_logging

    configure_logging(core.log_level, core.log_format)
    return run_command(
        f"aiserver-ledger {args.group} {args.command}",
        COMMANDS[(args.group, args.command)](core, args),
        as_json=args.json,
    )


if __name__ == "__main__":
    sys.exit(main())
