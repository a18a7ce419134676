"""`aiserver-costs calc`: the exact cost of a model call, or of a file of them (`--batch`)."""

from __future__ import annotations

import argparse
import sys
from typing import IO, TYPE_CHECKING, Any, Final

import msgspec

from aiserver.core_db.commands import counted, timestamp
from aiserver.core_db.errors import AiserverError, InvalidInput
from aiserver.costs.cli.common import Settings, connect, load_catalog, print_json, problem_of, when
from aiserver.costs.requests import decode_cost_request, request_json

if TYPE_CHECKING:
    from aiserver.costs.calculator import CostResult
    from aiserver.costs.catalog import Catalog

#: The usage options of `calc` and what each counts (docs/costs.md, "Usage: totals and their
#: parts"); 0 if omitted.
USAGE_OPTIONS: Final = {
    "input_tokens": "every prompt token, cache reads and writes included",
    "output_tokens": "every generated token, reasoning included",
    "cache_read_tokens": "the part of --input-tokens read from cache",
    "cache_write_tokens": "the part of --input-tokens written to cache",
    "reasoning_tokens": "the part of --output-tokens spent reasoning",
    "input_audio_tokens": "the part of --input-tokens that is audio",
    "output_audio_tokens": "the part of --output-tokens that is audio",
    "images": "images generated",
    "requests": "requests, for models with a per-request fee",
}


#: The names of `aiserver.costs.usage_formats.USAGE_FORMATS`, the choices of `--usage-format`
#: (written out: the parser imports nothing of the package).
USAGE_FORMAT_NAMES: Final = (
    "openai.chat",
    "openai.responses",
    "anthropic",
    "gemini",
    "bedrock.converse",
)


#: The exit status of `calc --batch` when some lines failed (each has its error in the output),
#: as `aiserver-ledger import` exits when some lines were refused.
FAILED_LINES: Final = 3


def _count(text: str) -> int:
    """An argparse type: a count of `calc`, a whole number in ASCII digits from 0 to the most a
    usage takes (`MAX_QUANTITY`), so that a typo is a wrong argument. `int()` alone reads more:
    "1_000" is 1000, and so are other scripts' digits; "-5" was priced until the calculator
    refused it, and a number of thousands of digits said "invalid int value"."""
    from aiserver.costs.pricing.usage import MAX_QUANTITY  # calc imports it anyway

    digits = text.isascii() and text.isdigit() and len(text) <= len(str(MAX_QUANTITY))
    if not digits or int(text) > MAX_QUANTITY:
        raise argparse.ArgumentTypeError(f"a whole number, 0 to {MAX_QUANTITY}: {text[:30]!r}")
    return int(text)


async def calc(settings: Settings, args: argparse.Namespace) -> int:
    from aiserver.costs.calculator import CostRequest, CostResponse, calculate
    from aiserver.costs.pricing import Usage

    if args.batch is None and args.model is None:
        print("aiserver-costs calc: give MODEL, or --batch FILE", file=sys.stderr)
        return 2
    given = [name for name in USAGE_OPTIONS if getattr(args, name)]
    if args.batch is not None and (args.model is not None or given or args.usage is not None):
        # each line of the file names its model and usage: a MODEL beside it was ignored
        print("aiserver-costs calc: give MODEL (with its counts) or --batch FILE, not both: "
              "each line of the file names its own model and usage", file=sys.stderr)  # fmt: skip
        return 2
    if args.usage is not None and given:
        print("aiserver-costs calc: give --usage or the counts, not both", file=sys.stderr)
        return 2
    if args.usage_format is not None and args.usage is None:
        print("aiserver-costs calc: --usage-format needs --usage", file=sys.stderr)
        return 2
    if args.batch is None and args.usage is None and not given:
        # priced all the same (the model's prices show in the answer), but a 0 is no cost
        print("aiserver-costs calc: no usage given (--input-tokens, --output-tokens, ... or "
              "--usage): every count is 0, so the total is 0", file=sys.stderr)  # fmt: skip
    # bytes: msgspec reads UTF-8 itself, and a line that is not UTF-8 fails alone
    batch = None if args.batch is None else _open_batch(args.batch)
    try:
        conn = await connect(settings)
        try:
            catalog = await load_catalog(conn)
        finally:
            await conn.close()
        if batch is not None:
            return _calc_batch(catalog, batch)
    finally:
        if batch is not None and batch is not sys.stdin.buffer:
            batch.close()
    request = CostRequest(
        model=args.model,
        provider=args.provider,
        usage=Usage(**{name: getattr(args, name) for name in USAGE_OPTIONS})
        if args.usage is None
        else request_json(args.usage),
        usage_format=args.usage_format,
        service_tier=args.service_tier,
        at=args.at,
    )
    result = calculate(catalog, request)
    if args.json:
        print_json(CostResponse.of(result))
    else:
        _print_result(result)
    return 0


def _print_result(result: CostResult) -> None:
    from aiserver.costs.money import money

    version = result.price_version or "none (the override's model)"
    print(
        f"model:    {result.model} ({result.provider}), matched by {result.matched_by}; "
        f"price version {version}, catalog version {result.catalog_version}"
    )
    width = max((len(c.name) for c in result.components), default=5)
    for c in result.components:
        unit, cost = money(c.unit_price), money(c.cost)
        print(f"  {c.name:<{width}}  {c.quantity:>12} x {unit:<14} = {cost}")
    print(f"total:    {money(result.total)} {result.currency}")
    if result.unpriced:
        unpriced = ", ".join(result.unpriced)
        print(f"unpriced: {unpriced} (no price in the catalog, so not in the total)")
    if result.override_id is not None:
        at = when(result.at)
        print(f"override: {result.override_id}, the operator's override valid at {at}")
    for note in result.notes:
        print(f"note:     {note}")


def _open_batch(path: str) -> IO[bytes]:
    """The --batch FILE (stdin for '-'); one that cannot be read is a problem that names it."""
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # noqa: PTH123  # closed by calc
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None


def _calc_batch(catalog: Catalog, stream: IO[bytes]) -> int:
    """Price each line of `stream`, read as the API reads a request (`decode_cost_request`);
    exit status 0, or FAILED_LINES when some lines failed."""
    from aiserver.costs.calculator import CostResponse, calculate

    encode = msgspec.json.Encoder(decimal_format="string").encode_into
    out = bytearray()
    failed = 0
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            result: Any = CostResponse.of(calculate(catalog, decode_cost_request(line)))
        except (AiserverError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            failed += 1
            result = {"error": problem_of(exc), "line": number}
        encode(result, out, -1)
        out += b"\n"
        if len(out) > 1 << 16:
            sys.stdout.buffer.write(out)
            out.clear()
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    if failed:
        print(f"aiserver-costs calc: {counted(failed, 'line')} failed", file=sys.stderr)
        return FAILED_LINES
    return 0


def add_calc(sub: Any) -> None:
    """The parser of `calc`."""
    calc = sub.add_parser(
        "calc",
        help="the exact cost of a model call (or of a file of them with --batch)",
        description="Price a model call with the catalog in the database. Token parts: cache "
        "read/write tokens are part of --input-tokens, reasoning tokens part of "
        "--output-tokens. Instead of the counts, --usage takes a usage object as JSON, and "
        "with --usage-format the provider's own (openai.chat: the usage of a chat completion, "
        "...). With --batch, read cost requests as JSON lines (the body of POST "
        "/v1/costs/calculate, usage_format included) and write one JSON result per line, in "
        'order; a line that fails gives {"error": {...}, "line": N}, the problem the API '
        "answers, and the rest go on. Exit status: 0 priced (every line, with --batch); 3 some "
        "lines of --batch failed (each is in the output, stderr counts them); 1 it could not "
        "run (e.g. a FILE it cannot read); 2 wrong arguments or settings.",
        epilog=(
            "examples:\n"
            "  aiserver-costs calc gpt-4o --input-tokens 1000 --output-tokens 500\n"
            "  aiserver-costs calc gpt-4o --usage-format openai.chat \\\n"
            '      --usage \'{"prompt_tokens": 1000, "completion_tokens": 500}\'\n'
            "  aiserver-costs calc --batch calls.jsonl > priced.jsonl"
        ),
    )
    calc.add_argument("model", metavar="MODEL", nargs="?", help="model name, e.g. openai/gpt-4o")
    calc.add_argument("--provider", help="provider, when MODEL has no provider prefix")
    for name, counts in USAGE_OPTIONS.items():
        calc.add_argument(
            "--" + name.replace("_", "-"),
            type=_count,
            default=0,
            metavar="N",
            dest=name,
            help=counts,
        )
    calc.add_argument(
        "--usage",
        metavar="JSON",
        help="the usage as a JSON object, instead of the counts: ours, or the provider's own "
        "with --usage-format",
    )
    calc.add_argument(
        "--usage-format",
        metavar="FORMAT",
        # the names of aiserver.costs.usage_formats.USAGE_FORMATS, which --help does not import;
        # another name is a wrong argument (exit 2), as an unknown --service-tier is
        choices=USAGE_FORMAT_NAMES,
        help="--usage is this provider's usage object: openai.chat, openai.responses, "
        "anthropic, gemini or bedrock.converse (docs/usage-formats.md)",
    )
    calc.add_argument(
        "--service-tier",
        choices=("standard", "batch", "priority", "flex"),
        default="standard",
        help="service tier (default: %(default)s)",
    )
    calc.add_argument(
        "--at",
        type=timestamp,
        metavar="TIME",
        help="time of the call, RFC 3339 (default: now); picks the price version valid then",
    )
    calc.add_argument("--json", action="store_true", help="print the result as JSON")
    calc.add_argument(
        "--batch", metavar="FILE", help="JSON lines of cost requests; '-' reads stdin"
    )
