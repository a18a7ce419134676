"""`aiserver-ledger projects create|list|show` and `keys create|list|revoke`: the tenants and
who may touch them."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from aiserver.core_db.commands import timestamp
from aiserver.ledger.cli.common import (
    Command,
    counted,
    print_json,
    when,
    whole_number,
    with_pool,
    zone_argument,
)
from aiserver.ledger.keys import SCOPES

if TYPE_CHECKING:
    from aiserver.core_db.settings import CoreSettings
    from aiserver.ledger.store import ApiKey, Project


def _project_lines(project: Project) -> list[str]:
    tags = ", ".join(project.rollup_tags) or "-"
    state = f"archived {when(project.archived_at)}" if project.archived_at else "active"
    return [
        f"project:      {project.slug} ({project.name})",
        f"time zone:    {project.time_zone}",
        f"rollup tags:  {tags}",
        f"created:      {when(project.created_at)}; {state}",
    ]


def _key_state(key: ApiKey) -> str:
    """revoked, expired or active: what the API makes of the key now."""
    if key.revoked_at:
        return "revoked"
    if key.expires_at and key.expires_at <= datetime.now(UTC):
        return "expired"
    return "active"


_PROJECT_HEADER: Final = f"{'SLUG':<32} {'TIME ZONE':<20} NAME"
_KEY_HEADER: Final = (
    f"{'ID':>6}  {'KEY':<22}  {'SCOPES':<18} {'STATE':<8} {'EXPIRES':<20} {'LAST USED':<20} NAME"
)


def _key_line(key: ApiKey) -> str:
    state = _key_state(key)
    return (
        f"{key.id:>6}  ais_{key.public_id}_…  {','.join(key.scopes):<18} {state:<8} "
        f"{when(key.expires_at) if key.expires_at else 'never':<20} "
        f"{when(key.last_used_at) if key.last_used_at else 'never':<20} {key.name}"
    )


async def _projects_create(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        project = await projects.create_project(
            pool, Access.operator(), slug=args.slug, name=args.name or args.slug,
            time_zone=args.time_zone, rollup_tags=args.rollup_tag,
        )  # fmt: skip
        print_json(project) if args.json else print("\n".join(_project_lines(project)))
        return 0

    return await with_pool(core, work)


async def _projects_list(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import projects
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        found = await projects.list_projects(pool, Access.operator(), archived=args.archived)
        if args.json:
            print_json(found)
        else:
            if found:
                print(_PROJECT_HEADER)
            for project in found:
                archived = "  (archived)" if project.archived_at else ""
                print(f"{project.slug:<32} {project.time_zone:<20} {project.name}{archived}")
            print(counted(len(found), "project"))
        return 0

    return await with_pool(core, work)


async def _projects_show(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import api_keys, projects
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        project = await projects.show_project(pool, Access.operator(), args.slug)
        keys = await api_keys.list_keys(pool, Access.operator(), args.slug)
        if args.json:
            print_json({"project": project, "keys": keys})
        else:
            print("\n".join(_project_lines(project)))
            active = sum(1 for k in keys if _key_state(k) == "active")
            print(f"keys:         {active} active, {len(keys)} in all")
        return 0

    return await with_pool(core, work)


async def _keys_create(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import api_keys
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        created = await api_keys.create_key(
            pool, Access.operator(), args.project, name=args.name,
            scopes=args.scope or list(SCOPES), expires_at=args.expires_at,
        )  # fmt: skip
        if args.json:
            print_json({"key": created.text, **_key_dict(created.key)})
        else:
            print(created.text)
            print(
                f"key {created.key.id} of {created.key.project} ({', '.join(created.key.scopes)}): "
                "shown this once; keep it in your secret store",
                file=sys.stderr,
            )
        return 0

    return await with_pool(core, work)


def _key_dict(key: ApiKey) -> dict[str, Any]:
    import msgspec

    return msgspec.structs.asdict(key)


async def _keys_list(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import api_keys
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        keys = await api_keys.list_keys(pool, Access.operator(), args.project)
        if args.json:
            print_json(keys)
        else:
            if keys:
                print(_KEY_HEADER)
            for key in keys:
                print(_key_line(key))
            print(counted(len(keys), "key"))
        return 0

    return await with_pool(core, work)


async def _keys_revoke(core: CoreSettings, args: argparse.Namespace) -> int:
    from aiserver.ledger import api_keys
    from aiserver.ledger.access import Access

    async def work(pool: Any) -> int:
        key = await api_keys.revoke_key(pool, Access.operator(), args.key_id)  # each API
        # process stops accepting it as the revocation commits (it is announced)
        if args.json:
            print_json(key)
        else:
            print(f"key {key.id} of {key.project} revoked at {when(key.revoked_at)}")
        return 0

    return await with_pool(core, work)


def _project_argument(command: Any) -> None:
    """The project of `keys create|list`: as an argument (as it always was) or as --project,
    as every other command takes it; one of the two."""
    command.add_argument("project_slug", nargs="?", metavar="PROJECT",
                         help="the project's slug (or --project SLUG)")  # fmt: skip
    command.add_argument("--project", metavar="SLUG", help="the project's slug (projects list)")
    command.check = _one_project


def _one_project(args: argparse.Namespace) -> str | None:
    """The parser's `check` of `keys create|list`: the project named once, either way; then it
    is `args.project`."""
    if args.project_slug is not None and args.project is not None:
        if args.project_slug != args.project:
            return f"two projects named: {args.project_slug} and --project {args.project}"
    elif args.project_slug is None and args.project is None:
        return "the project is required: PROJECT or --project SLUG"
    if args.project is None:  # an empty --project is a slug that names no project, not none
        args.project = args.project_slug
    return None


def add_parsers(groups: Any) -> None:
    """The `projects` and `keys` commands, each with --json."""
    from aiserver.core_db.connections import MAX_BIGINT

    projects = groups.add_parser(
        "projects",
        help="create, list and show projects",
        description="A project is a tenant of the ledger: its usage, keys and budgets are its\n"
        "own. Archiving one (or restoring it) is PATCH /v1/projects/{project} with an\n"
        "operator's token (docs/keys.md).",
        epilog="examples:\n"
        "  aiserver-ledger projects create acme-search --name 'Acme search' \\\n"
        "      --time-zone Europe/Berlin --rollup-tag team\n"
        "  aiserver-ledger projects list --archived\n"
        "  aiserver-ledger projects show acme-search --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_sub = projects.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = p_sub.add_parser(
        "create",
        help="create a project",
        description="Create a project. Its slug names it in URLs: 1 to 64 lower-case letters, "
        "digits and inner hyphens.",
        epilog=(
            "example:\n"
            "  aiserver-ledger projects create acme-search --name 'Acme search' \\\n"
            "      --tz Europe/Berlin --rollup-tag team"
        ),
    )
    create.add_argument("slug", metavar="SLUG", help="e.g. acme-search")
    create.add_argument("--name", help="a name for people (default: the slug)")
    create.add_argument(
        "--time-zone",
        "--tz",  # as spend names it
        dest="time_zone",
        type=zone_argument,
        default="UTC",
        metavar="ZONE",
        help="IANA time zone of its budget periods and spend buckets (default: %(default)s)",
    )
    create.add_argument(
        "--rollup-tag",
        action="append",
        default=[],
        metavar="KEY",
        help="a tag key whose spend is rolled up (up to 4; repeat the option)",
    )
    listing = p_sub.add_parser(
        "list",
        help="list the projects",
        description="List the projects: slug, time zone and name (archived ones with --archived).",
        epilog="example:\n  aiserver-ledger projects list --archived",
    )
    listing.add_argument("--archived", action="store_true", help="include archived projects")
    show = p_sub.add_parser(
        "show",
        help="one project and how many keys it has",
        description="Show a project: its name, time zone, rolled-up tag keys, when it was made "
        "(and archived), and how many of its keys are active.",
        epilog="example:\n  aiserver-ledger projects show acme-search --json",
    )
    show.add_argument("slug", metavar="SLUG", help="the project's slug (projects list)")

    keys = groups.add_parser(
        "keys",
        help="create, list and revoke a project's API keys",
        description="A project's API keys (ais_<public id>_<secret>): a key is shown once, when\n"
        "it is made; only a hash of its secret is kept. To rotate one: create the new key, move\n"
        "the clients, check that the old key's last use stops moving (keys list), revoke it.",
        epilog="examples:\n"
        "  aiserver-ledger keys create --project acme-search --name search-api --scope ingest\n"
        "  aiserver-ledger keys create --project acme-search --name finance --scope read \\\n"
        "      --expires-at 2027-06-30T00:00:00Z\n"
        "  aiserver-ledger keys list --project acme-search\n"
        "  aiserver-ledger keys revoke 12",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    k_sub = keys.add_subparsers(dest="command", required=True, metavar="COMMAND")
    k_create = k_sub.add_parser(
        "create",
        help="create a key (printed once on stdout)",
        description="Create an API key of a project and print it on stdout, once: only a hash "
        "of its secret is stored. Scopes: ingest (record usage, reserve budget), read (spend, "
        "events, exports, budget status), admin (the project's keys, budgets, repricing).",
        epilog=(
            "example:\n"
            "  aiserver-ledger keys create --project acme-search --name search-api \\\n"
            "      --scope ingest --scope read"
        ),
    )
    _project_argument(k_create)
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
    k_list = k_sub.add_parser(
        "list",
        help="a project's keys (never their secrets)",
        description="List a project's keys: id, public id, scopes, state (active, revoked, "
        "expired), expiry, last use and name. Never their secrets.",
        epilog="example:\n  aiserver-ledger keys list --project acme-search",
    )
    _project_argument(k_list)
    k_revoke = k_sub.add_parser(
        "revoke",
        help="revoke a key",
        description="Revoke a key: every API process refuses it as the revocation commits "
        "(within API_KEY_CACHE_SECONDS where a process cannot listen for it).",
        epilog="example:\n  aiserver-ledger keys revoke 12   # the id that keys list shows",
    )
    key_id = whole_number(f"a key id, 1 to {MAX_BIGINT}", 1, MAX_BIGINT)
    k_revoke.add_argument("key_id", type=key_id, metavar="KEY_ID", help="the key's id (keys list)")
    for command in (create, listing, show, k_create, k_list, k_revoke):
        command.add_argument("--json", action="store_true", help="print JSON")


COMMANDS: Final[dict[tuple[str, str | None], Command]] = {
    ("projects", "create"): _projects_create,
    ("projects", "list"): _projects_list,
    ("projects", "show"): _projects_show,
    ("keys", "create"): _keys_create,
    ("keys", "list"): _keys_list,
    ("keys", "revoke"): _keys_revoke,
}
