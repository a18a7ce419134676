"""The spend read: a project's usage summed per bucket and group, in one snapshot.

Three sources make one answer, each over time ranges that `aiserver.ledger.spend.query` plans
so that no event is counted twice or missed:

- the rollups over the *rolled* ranges (whole UTC hours): every event folded so far; the days
  of the project's clock that lie whole in them and in one bucket from `usage_rollups_daily`
  (24 times fewer rows), the other hours from `usage_rollups`;
- the outbox tail over the same ranges: the events recorded but not folded yet, read from
  `usage_events` through their `usage_outbox` row (what the fold will add);
- `usage_events` over the *raw* ranges: the parts of hours that a bucket boundary (or `from`,
  `to`) cuts, which an hourly rollup cannot split, or the whole window when a tag key that the
  project does not roll up is asked for.

The statements run in one REPEATABLE READ, read-only transaction: a fold that commits meanwhile
(moving events from the outbox into the rollups) is either wholly seen or not at all.

Under `top`, the statement keeps the groups itself (the N largest over the window, the rest
summed per bucket into one row marked `other`), so a group-by of 50,000 tag values returns
N + 1 rows a bucket, not 50,000; `max_rows` stops the read one row past the most an answer may
hold. A cut hour older than the project's oldest retained event has lost its raw events to
retention: the read says which of them the rollups hold events of the question in (`LostHours`).

Each source is read in its primary key's order (`(project_id, hour, ...)`,
`(project_id, occurred_at, id)`): the rolled ranges by their outer bounds, a row kept when a
binary search over the ranges' edges puts it inside one, so a month of rollups is one range of
an index; the cut hours each by a range of their own; the partitions of `usage_events` outside
them are pruned. Each source sums its rows per bucket and group before they are added up. The
bucket of a row is `width_bucket` over the buckets' starts (a binary search too).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection

Dimension = tuple[Literal["model", "provider", "status", "tag"], str | None]

#: A dimension's value in a rollup row and in an event row (a tag's key is a parameter).
_ROLLUP_DIMENSION: Final = {
    "model": "r.model",
    "provider": "r.provider",
    "status": "r.status",
}
_EVENT_DIMENSION: Final = {
    "model": "coalesce(e.matched_model, e.model)",
    "provider": "coalesce(e.matched_provider, e.provider, '')",
    "status": "e.status",
}
#: A group's value: no provider (`''` in a rollup's key) is null, as the answer shows it and
#: as `top` ranks it (after every name).
_ROLLUP_GROUP: Final = {**_ROLLUP_DIMENSION, "provider": "nullif(r.provider, '')"}
_EVENT_GROUP: Final = {
    **_EVENT_DIMENSION,
    "provider": "nullif(coalesce(e.matched_provider, e.provider), '')",
}
SUMS: Final = (
    "events",
    "unpriced_events",
    "partially_priced_events",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
_TOKENS: Final = SUMS[3:]


@dataclass(frozen=True, slots=True)
class SpendPlan:
    """What to read. Ranges are half-open [start, stop) in UTC, sorted, not overlapping; the
    rolled ones are whole UTC hours. `bucket_starts` is sorted and its first is the window's
    start; a row falls in the last bucket whose start is not after it."""

    project_id: int
    rolled: list[tuple[datetime, datetime]]
    raw: list[tuple[datetime, datetime]]
    bucket_starts: list[datetime]
    dimensions: list[Dimension]
    model: str | None = None
    provider: str | None = None
    status: str | None = None
    tags_json: str | None = None  # a JSON object the event's (or rollup's) tags must contain
    # Of the rolled hours, the days read from the daily rollups, each with its bucket (1-based),
    # and the `hourly` ranges left; valid while the project's time zone is `days_zone` (the
    # zone the daily rollups are summed in). Without days, every rolled hour is read hourly.
    days: list[date] = field(default_factory=list)
    day_buckets: list[int] = field(default_factory=list)
    hourly: list[tuple[datetime, datetime]] = field(default_factory=list)
    days_zone: str | None = None
    # The tag keys the rolled hours are read by (grouped or filtered): valid while each is
    # still rolled up (in the project's rollup_tags and rolled_up_tags).
    rolled_tags: tuple[str, ...] = ()
    # The UTC hours (their starts) that a boundary cuts, whose parts in the window are read
    # from raw events: checked against retention (`LostHours`). Empty when `raw` is the window.
    cut_hours: list[datetime] = field(default_factory=list)
    top: int | None = None  # keep the N largest groups over the window; the rest is `other`
    max_rows: int | None = None  # read at most one row more than this (the caller refuses it)


@dataclass(frozen=True, slots=True)
class SpendRow:
    bucket: int  # 0-based index into the plan's bucket_starts
    key: tuple[str | None, ...]  # the dimensions' values; a tag the event lacks is None
    sums: tuple[int, ...]  # as SUMS
    cost: Decimal
    unfolded: int  # events of the outbox tail among them
    other: bool = False  # under top: the groups not kept, summed (key all None)


@dataclass(frozen=True, slots=True)
class LostHours:
    """Cut hours whose raw events retention dropped: the `hours` before `oldest` (the hour of
    the project's oldest retained event; None when none is left) whose rollups hold `events`
    events of the question over the whole hour, which the parts of them inside the window
    could not count."""

    hours: list[datetime]
    events: int
    oldest: datetime | None


@dataclass(frozen=True, slots=True)
class SpendRead:
    rows: list[SpendRow]
    as_of: datetime  # the snapshot: every event committed before it is counted
    through_event_id: int | None  # the project's largest event id in the snapshot
    # a tag key of the plan's rolled hours was no longer rolled up in the snapshot: the whole
    # window was read from raw events instead
    raw_instead: bool = False
    lost: LostHours | None = None  # cut hours that count nothing: retention dropped them


class _Statement:
    def __init__(self, plan: SpendPlan) -> None:
        self.args: list[Any] = [plan.project_id]

    def param(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def within(self, column: str, ranges: list[tuple[datetime, datetime]]) -> str:
        """A condition that `column` is in one of `ranges` (sorted, apart): the bounds of them
        all, which an index reads as one range, and then, for more than one, that `column`
        falls between a start and its stop (an odd bucket of their edges: a binary search per
        row, where a join with the ranges would compare each row with every range)."""
        bounds = (
            f"{column} >= {self.param(ranges[0][0])} AND {column} < {self.param(ranges[-1][1])}"
        )
        if len(ranges) == 1:
            return bounds
        edges = self.param([edge for piece in ranges for edge in piece])
        return f"{bounds} AND width_bucket({column}, {edges}::timestamptz[]) % 2 = 1"

    def ranges(self, ranges: list[tuple[datetime, datetime]]) -> str:
        """The ranges as a relation `s(start, stop)`."""
        starts = self.param([start for start, _ in ranges])
        stops = self.param([stop for _, stop in ranges])
        return f"unnest({starts}::timestamptz[], {stops}::timestamptz[]) AS s(start, stop)"


def _filters(st: _Statement, plan: SpendPlan, alias: str, known: dict[str, str]) -> str:
    """The plan's filters, as conditions on the rows of `alias` (rollups or events)."""
    where = []
    for name, value in (
        ("model", plan.model),
        ("provider", plan.provider),
        ("status", plan.status),
    ):
        if value is not None:
            where.append(f"{known[name]} = {st.param(value)}")
    if plan.tags_json is not None:
        where.append(f"{alias}.tags @> {st.param(plan.tags_json)}::jsonb")
    return "".join(f" AND {clause}" for clause in where)


def spend_statement(plan: SpendPlan) -> tuple[str, list[Any]]:
    """The statement of the sums per bucket and group, and its parameters."""
    st = _Statement(plan)
    starts = st.param(plan.bucket_starts)
    tag_keys = [st.param(key) if name == "tag" else "" for name, key in plan.dimensions]

    def dimensions(alias: str, known: dict[str, str]) -> str:
        columns = [
            f"{alias}.tags ->> {tag_key}" if name == "tag" else known[name]
            for (name, _), tag_key in zip(plan.dimensions, tag_keys, strict=True)
        ]
        return "".join(f", {column} AS d{i}" for i, column in enumerate(columns))

    def filters(alias: str, known: dict[str, str]) -> str:
        return _filters(st, plan, alias, known)

    # each part sums its own rows first: the last GROUP BY adds up a few rows per group
    by = "GROUP BY " + ", ".join(str(i) for i in range(1, len(plan.dimensions) + 2))
    # a rollup row is of one pricing status: its partially priced events are all or none
    rollup_sums = (
        "sum(r.events), sum(r.unpriced_events),"
        " sum(CASE WHEN r.status = 'partially_priced' THEN r.events ELSE 0 END), "
        + ", ".join(f"sum(r.{name})" for name in _TOKENS)
        + ", sum(r.cost)"
    )
    event_sums = (
        "count(*), count(*) FILTER (WHERE e.status = 'unpriced'),"
        " count(*) FILTER (WHERE e.status = 'partially_priced'), "
        + ", ".join(f"sum(e.{name})" for name in _TOKENS)
        + ", sum(coalesce(e.total_cost, 0))"
    )
    parts = []
    if plan.rolled:
        hourly_columns = (
            f"width_bucket(r.hour, {starts}::timestamptz[])"
            f"{dimensions('r', _ROLLUP_GROUP)}, {rollup_sums}, 0"
        )
        if not plan.days:  # the rolled hours as one range of the index
            parts.append(
                f"SELECT {hourly_columns} FROM usage_rollups r"  # noqa: S608
                f" WHERE r.project_id = $1 AND {st.within('r.hour', plan.rolled)}"
                f"{filters('r', _ROLLUP_DIMENSION)} {by}"
            )
        elif plan.hourly:  # the hours around the days, apart: each range of them on its own
            parts.append(
                f"SELECT {hourly_columns} FROM {st.ranges(plan.hourly)}"  # noqa: S608
                " CROSS JOIN LATERAL (SELECT * FROM usage_rollups r WHERE r.project_id = $1"
                f" AND r.hour >= s.start AND r.hour < s.stop{filters('r', _ROLLUP_DIMENSION)}"
                " OFFSET 0) AS r"  # kept a loop of index ranges: merged, it scans the table
                f" {by}"
            )
        if plan.days:  # the bounds let the index read one range; the join gives each its bucket
            parts.append(
                f"SELECT d.bucket{dimensions('r', _ROLLUP_GROUP)}, {rollup_sums}, 0"  # noqa: S608
                f" FROM unnest({st.param(plan.days)}::date[], {st.param(plan.day_buckets)}::int[])"
                " AS d (day, bucket) JOIN usage_rollups_daily r ON r.day = d.day"
                f" WHERE r.project_id = $1 AND r.day >= {st.param(plan.days[0])}"
                f" AND r.day <= {st.param(plan.days[-1])}{filters('r', _ROLLUP_DIMENSION)} {by}"
            )
        outbox = st.within("o.occurred_at", plan.rolled)
        parts.append(  # the tail: what the fold will add to those hours
            f"SELECT width_bucket(e.occurred_at, {starts}::timestamptz[])"  # noqa: S608
            f"{dimensions('e', _EVENT_GROUP)}, {event_sums}, count(*)"
            f" FROM usage_outbox o JOIN usage_events e ON e.project_id = o.project_id"
            " AND e.occurred_at = o.occurred_at AND e.id = o.event_id"
            f" WHERE o.project_id = $1 AND {outbox}{filters('e', _EVENT_DIMENSION)} {by}"
        )
    if plan.raw:
        # one range (the whole window) is read as one range of the index; the cut hours (many
        # short ranges) each as a range of its own: LATERAL makes it a loop over them, where a
        # join could be planned as a scan of the whole window compared with every range
        columns = (
            f"width_bucket(e.occurred_at, {starts}::timestamptz[])"
            f"{dimensions('e', _EVENT_GROUP)}, {event_sums}, 0"
        )
        if len(plan.raw) == 1:
            parts.append(
                f"SELECT {columns} FROM usage_events e"  # noqa: S608
                f" WHERE e.project_id = $1 AND {st.within('e.occurred_at', plan.raw)}"
                f"{filters('e', _EVENT_DIMENSION)} {by}"
            )
        else:
            kept = filters("e", _EVENT_DIMENSION)
            parts.append(
                f"SELECT {columns} FROM {st.ranges(plan.raw)} CROSS JOIN LATERAL"  # noqa: S608
                " (SELECT * FROM usage_events e WHERE e.project_id = $1"
                f" AND e.occurred_at >= s.start AND e.occurred_at < s.stop{kept}"
                " OFFSET 0) AS e"  # kept a loop: merged, 10M events were sorted to join 31 ranges
                f" {by}"
            )
    groups = "".join(f", d{i}" for i in range(len(plan.dimensions)))
    # one part has summed its groups already; several are added up per group. The sums stay
    # NUMERIC, as the rollups keep them: 10,000 events of 10**15 tokens each (the most one may
    # report) sum past a BIGINT's range
    total, regroup = ("{}", "") if len(parts) == 1 else ("sum({})", f" GROUP BY bucket{groups}")
    sums = ", ".join(f"{total.format(name)}::numeric AS {name}" for name in (*SUMS, "unfolded"))
    sql = (  # every value is a parameter; only names and aliases are spliced in
        f"SELECT bucket{groups}, {sums}, {total.format('cost')} AS cost, false AS other"  # noqa: S608
        f" FROM ({' UNION ALL '.join(parts)}) AS parts (bucket{groups}, {', '.join(SUMS)},"
        f" cost, unfolded){regroup}"
    )
    if plan.top is not None and plan.dimensions:
        sql = _keep_top(st, sql, len(plan.dimensions), plan.top)
    if plan.max_rows is not None:
        sql += f" LIMIT {st.param(plan.max_rows + 1)}"
    return sql, st.args


def _keep_top(st: _Statement, sums: str, width: int, top: int) -> str:
    """`sums` (a row per bucket and group) with the `top` groups of the largest cost over the
    window kept and the others summed per bucket into one row, `other`. The order is the
    answer's (`aiserver.ledger.spend.answer`): the cost, then each value, a null after every
    name, names compared by code point (`COLLATE "C"`: UTF-8's byte order is the code
    points'), so the groups kept are those the answer would keep. A group is matched by its
    values and whether each is null, which a hash join can do (`IS NOT DISTINCT FROM` cannot)."""
    names = [f"d{i}" for i in range(width)]
    flags = ", ".join(
        f"{d} IS NULL AS n{i}, coalesce({d}, '') AS v{i}" for i, d in enumerate(names)
    )
    order = ", ".join(f'{d} IS NULL, {d} COLLATE "C"' for d in names)
    match = " AND ".join(
        f"k.n{i} = (s.{d} IS NULL) AND k.v{i} = coalesce(s.{d}, '')" for i, d in enumerate(names)
    )
    keys = ", ".join(f"CASE WHEN k.n0 IS NOT NULL THEN s.{d} END AS {d}" for d in names)
    totals = ", ".join(f"sum(s.{name}) AS {name}" for name in (*SUMS, "unfolded"))
    return (
        f"WITH s AS MATERIALIZED ({sums}),"  # noqa: S608
        f" k AS (SELECT {flags} FROM s GROUP BY {', '.join(names)}"
        f" ORDER BY sum(s.cost) DESC, {order} LIMIT {st.param(top)})"
        f" SELECT s.bucket, k.n0 IS NULL AS other, {keys}, {totals}, sum(s.cost) AS cost"
        f" FROM s LEFT JOIN k ON {match}"
        f" GROUP BY {', '.join(str(i) for i in range(1, width + 3))}"
    )


async def select_spend(conn: DbConnection, plan: SpendPlan) -> SpendRead:
    """The plan's sums per bucket and group, and the snapshot they are as of."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # A plan for these values: a generic plan (which a prepared statement gets after five
        # runs) knows neither the window, so it cannot prune partitions or pick the index, nor
        # how many ranges there are. And no JIT compiling: the estimates of the ranges run far
        # above the rows read, which would buy seconds of compiling for milliseconds of work.
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL jit = off")
        (head,) = await conn.fetch(
            "SELECT now() AS as_of,"
            " (SELECT max(id) FROM usage_events WHERE project_id = $1) AS through,"
            " p.time_zone, p.rollup_tags, p.rolled_up_tags"
            " FROM (SELECT 1) AS one LEFT JOIN projects AS p ON p.id = $1",
            plan.project_id,
        )
        rolled_up = set(head["rollup_tags"] or ()) & set(head["rolled_up_tags"] or ())
        raw_instead = bool(plan.rolled) and not rolled_up.issuperset(plan.rolled_tags)
        if raw_instead:
            # a key the plan reads the rollups by was taken out of them since the plan was
            # made (the rows folded since carry it no more): read the window from raw events
            ranges = plan.rolled + plan.raw
            window = (min(r[0] for r in ranges), max(r[1] for r in ranges))
            plan = replace(plan, rolled=[], raw=[window], days=[], day_buckets=[], hourly=[])
        elif plan.days and head["time_zone"] != plan.days_zone:
            # the zone changed since the plan was made: the daily rows in this snapshot are
            # days of another clock, so read those hours hourly
            plan = replace(plan, days=[], day_buckets=[], hourly=[])
        records: list[asyncpg.Record] = []
        if plan.rolled or plan.raw:
            sql, args = spend_statement(plan)
            records = list(await conn.fetch(sql, *args))
        lost = None
        if plan.cut_hours and not raw_instead:
            lost = await _lost_hours(conn, plan)
    width = len(plan.dimensions)
    rows = [
        SpendRow(
            bucket=r["bucket"] - 1,
            key=tuple(r[f"d{i}"] for i in range(width)),
            sums=tuple(int(r[name]) for name in SUMS),  # whole numbers, as NUMERIC
            cost=r["cost"],
            unfolded=int(r["unfolded"]),
            other=r["other"],
        )
        for r in records
    ]
    return SpendRead(
        rows=rows,
        as_of=head["as_of"],
        through_event_id=head["through"],
        raw_instead=raw_instead,
        lost=lost,
    )


async def _lost_hours(conn: DbConnection, plan: SpendPlan) -> LostHours | None:
    """The plan's cut hours whose raw events retention dropped and whose rollups hold events
    of the question (None when there are none). Retention drops whole months from the oldest
    on, so an hour before that of the project's oldest retained event has no events left; the
    rollups say whether it had any, and of the question (its filters, on the rolled-up keys
    alone as the rest of the plan is read from the rollups): an hour before the project's
    first event, or without such events, lost nothing."""
    oldest: datetime | None = await conn.fetchval(
        "SELECT date_trunc('hour', min(occurred_at), 'UTC') FROM usage_events"
        " WHERE project_id = $1",
        plan.project_id,
    )
    before = [hour for hour in plan.cut_hours if oldest is None or hour < oldest]
    if not before:
        return None
    st = _Statement(plan)
    hours = st.param(before)
    rows = await conn.fetch(
        "SELECT r.hour, sum(r.events) AS events FROM usage_rollups r"  # noqa: S608
        f" WHERE r.project_id = $1 AND r.hour = ANY({hours}::timestamptz[])"
        f"{_filters(st, plan, 'r', _ROLLUP_DIMENSION)} GROUP BY r.hour HAVING sum(r.events) > 0"
        " ORDER BY r.hour",
        *st.args,
    )
    if not rows:
        return None
    return LostHours(
        hours=[r["hour"] for r in rows], events=sum(int(r["events"]) for r in rows), oldest=oldest
    )
