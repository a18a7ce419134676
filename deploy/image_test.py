#!/usr/bin/env python3
"""Image test: build both service images with podman and run them with PostgreSQL and Redis.

    hatch run build:images-test              # what .ci/run runs where podman is installed

1. wheelhouses dist/api and dist/taskrunner (deploy/wheelhouse.py);
2. the base image: --base-image, or else one made locally by deploy/local_base_image.py
   (debootstrap, cached in podman's storage), since no registry is reachable here;
3. `podman build --format docker` of deploy/API.Dockerfile and deploy/TaskRunner.Dockerfile on
   that base, and of deploy/TestBacking.Dockerfile (PostgreSQL and Redis from Debian's packages);
4. a stack in one network namespace: PostgreSQL, Redis, two task runners started together and
   one API, the API's port 8000 published on 127.0.0.1 only;
5. checks: both task runners turn healthy (their image HEALTHCHECK, `aiserver-taskrunner check`),
   the API's HEALTHCHECK passes, GET /health and /ready answer 200, the API serves a cost, each
   migration was applied once although two task runners started at once, the processes run as
   uid 10001, and no uv is left in the final images;
   documents: a docx, doc, odt, rtf, txt and pdf, each uploaded to the API container
   (POST /v1/documents) and converted by one of the task runner containers, come back done with
   their page count, the text of every page, the PDF and a PNG per page (the doc and the odt are
   the docx saved by the task runner image's own LibreOffice: no binary Word file is written by
   hand);
6. the image sizes and the size of the layers this project adds above the base, printed and
   written to dist/image-test/report.json.

The containers are removed at the end (--keep leaves them running for a look). Podman reads
deploy/containers.conf (runc, explicit ulimits) unless CONTAINERS_CONF is already set.
With --skip-if-unavailable, a machine without what the test needs (podman, runc, root,
debootstrap) makes it print why and exit 0: that is how .ci/run calls it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
REPORT = ROOT / "dist" / "image-test" / "report.json"
UID = "10001"
DB_URL = "postgresql://postgres@127.0.0.1:5432/aiserver"
REDIS_URL = "redis://127.0.0.1:6379/0"
COST_MODEL = "gpt-4o"
COST_REQUEST = {"model": COST_MODEL, "usage": {"input_tokens": 1000, "output_tokens": 500}}
#: The documents converted through the images: each kind, and the text of each page it holds.
TWO_PAGES = ("Invoice 4711 for Ada", "Second page here")
RTF_PAGES = ("RTF page one", "RTF page two")
TXT_PAGES = ("A plain text document, with umlauts: Zwölf Boxkämpfer",)
DOCUMENT_TIMEOUT_S = 180


class Unavailable(Exception):
    """This machine lacks something the test needs (not a failure of the images)."""


def step(message: str) -> None:
    print(f"\n--> {message}", flush=True)


def run(
    args: Sequence[str], *, check: bool = True, quiet: bool = False, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    if not quiet:
        print("$ " + " ".join(args), flush=True)
    result = subprocess.run(
        list(args), capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


def stream(args: Sequence[str]) -> None:
    """Run a long command with its output shown as it comes (builds)."""
    print("$ " + " ".join(args), flush=True)
    subprocess.run(list(args), check=True)


def wait_until(what: str, probe: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if probe():
            elapsed = time.monotonic() - started
            print(f"    {what}: after {elapsed:.1f} s", flush=True)
            return elapsed
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def passed(report: dict[str, Any], check: str) -> None:
    report.setdefault("checks", []).append(check)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fetch(
    method: str, url: str, data: bytes | None = None, content_type: str | None = None
) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request to the API under test."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the image test talks to its own API only, not {url}")
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), exc.read()


def http(method: str, url: str, body: object = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    status, _, raw = fetch(method, url, data, "application/json" if data else None)
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, raw.decode(errors="replace")


def multipart(field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body holding one file: (body, its content type)."""
    boundary = f"aiserver-imagetest-{uuid.uuid4().hex}"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"'
        "\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    body = head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# -- preparation ----------------------------------------------------------------------------------


def preflight() -> None:
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is not installed (apt-get install -y podman buildah runc)")
    if os.geteuid() != 0:
        raise Unavailable("rootful podman is needed (the machines run as root); not root here")
    info = run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], check=False, quiet=True)
    if info.returncode != 0:
        raise Unavailable(f"podman does not work here: {info.stderr.strip()}")


def remove_leftovers() -> None:
    """Containers of an earlier run that was killed before it could clean up (by name)."""
    names = run(
        [
            "podman",
            "ps",
            "--all",
            "--format",
            "{{.Names}}",
            "--filter",
            "name=^aiserver-imagetest-",
        ],
        check=False,
        quiet=True,
    ).stdout.split()
    for name in names:
        run(["podman", "rm", "--force", "--time", "5", name], check=False)


def lint_dockerfiles() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        print("    hadolint not installed here (the build env has it): not linted")
        return
    run([hadolint, *(str(p) for p in sorted(DEPLOY.glob("*.Dockerfile")))])
    print("    hadolint: clean")


def base_image(requested: str | None) -> str:
    if requested:
        return requested
    if shutil.which("debootstrap") is None:
        raise Unavailable(
            "no --base-image and no debootstrap to make one (apt-get install -y debootstrap)"
        )
    made = subprocess.run(
        [sys.executable, str(DEPLOY / "local_base_image.py")],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        raise Unavailable("the local base image could not be made (see above)")
    return made.stdout.split()[-1]


def build_wheelhouses() -> None:
    for service in ("api", "taskrunner"):
        stream([sys.executable, str(DEPLOY / "wheelhouse.py"), "build", service])


def revision() -> str:
    out = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False, quiet=True)
    return out.stdout.strip() or "unknown"


def build_image(
    dockerfile: str, tag: str, base: str, *, labels: bool = True, target: str | None = None
) -> float:
    """podman build; its long output goes to dist/image-test/<tag>.build.log (tail on failure)."""
    started = time.monotonic()
    log = REPORT.parent / f"{tag.rsplit('/', 1)[-1].replace(':', '-')}.build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    revision_arg = ["--build-arg", f"REVISION={revision()}"] if labels else []
    target_arg = ["--target", target] if target else []
    args = [
        "podman",
        "build",
        "--format",
        "docker",
        "--file",
        str(DEPLOY / dockerfile),
        "--build-arg",
        f"BASE_IMAGE={base}",
        *revision_arg,
        *target_arg,
        "--tag",
        tag,
        str(ROOT),
    ]
    print("$ " + " ".join(args), flush=True)
    with log.open("w") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        print("\n".join(log.read_text().splitlines()[-60:]))
        raise AssertionError(f"podman build of {dockerfile} failed (log: {log})")
    elapsed = time.monotonic() - started
    print(f"    built {tag} in {elapsed:.0f} s (log: {log.relative_to(ROOT)})", flush=True)
    return elapsed


# -- the stack ------------------------------------------------------------------------------------


class Stack:
    """The containers of one test run, all in the network namespace of the PostgreSQL one."""

    def __init__(self, images: dict[str, str], port: int) -> None:
        self.images = images
        self.port = port
        self.prefix = f"aiserver-imagetest-{os.getpid()}"
        self.names: list[str] = []

    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def start(self, role: str, image: str, *args: str, options: Sequence[str] = ()) -> str:
        name = self.name(role)
        network = (
            ["--publish", f"127.0.0.1:{self.port}:8000"]
            if not self.names
            else ["--network", f"container:{self.names[0]}"]
        )
        run(["podman", "run", "--detach", "--name", name, *network, *options, image, *args])
        self.names.append(name)
        return name

    def service_env(self, extra: dict[str, str] | None = None) -> list[str]:
        env = {
            "DATABASE_URL": DB_URL,
            "REDIS_URL": REDIS_URL,
            "LOG_FORMAT": "json",
            # no upstream is reachable: a refresh reads a missing file and records the error
            "MODEL_COST_SOURCE_URL": "file:///nonexistent/model_prices.json",
            "MODEL_COST_REFRESH_INTERVAL_SECONDS": "3600",
            **(extra or {}),
        }
        return [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]

    def exec(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["podman", "exec", self.name(role), *args], check=check, quiet=True)

    def healthy(self, role: str) -> bool:
        # podman runs HEALTHCHECKs from systemd timers; without systemd, run the check ourselves
        result = run(["podman", "healthcheck", "run", self.name(role)], check=False, quiet=True)
        return result.returncode == 0 and "unhealthy" not in result.stdout

    def logs(self, role: str) -> str:
        out = run(["podman", "logs", self.name(role)], check=False, quiet=True)
        return out.stdout + out.stderr

    def sql(self, query: str) -> str:
        return self.exec(
            "postgres", "psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "aiserver", "-Atc", query
        ).stdout.strip()

    def remove(self) -> None:
        for name in reversed(self.names):
            run(["podman", "rm", "--force", "--time", "5", name], check=False, quiet=True)


def bring_up(stack: Stack) -> None:
    backing = stack.images["backing"]
    step("PostgreSQL and Redis")
    stack.start("postgres", backing, "postgres", options=["--user", "postgres"])
    stack.start("redis", backing, "redis", options=["--user", "redis"])
    wait_until(
        "PostgreSQL accepts connections",
        lambda: (
            stack.exec("postgres", "pg_isready", "-h", "127.0.0.1", check=False).returncode == 0
        ),
        60,
    )
    stack.exec("postgres", "createdb", "-h", "127.0.0.1", "-U", "postgres", "aiserver")
    wait_until(
        "Redis answers",
        lambda: stack.exec("redis", "redis-cli", "ping", check=False).stdout.strip() == "PONG",
        30,
    )

    step("two task runners at once (both initialize the database), then the API")
    for role in ("taskrunner-1", "taskrunner-2"):
        stack.start(role, stack.images["taskrunner"], options=stack.service_env())
    stack.start("api", stack.images["api"], options=stack.service_env())


def check_stack(stack: Stack, report: dict[str, Any]) -> None:
    base = f"http://127.0.0.1:{stack.port}"
    timings = report.setdefault("seconds", {})
    for role in ("taskrunner-1", "taskrunner-2"):
        timings[f"{role} healthy"] = round(
            wait_until(
                f"{role} healthy (aiserver-taskrunner check)",
                lambda role=role: stack.healthy(role),
                180,
            ),
            1,
        )
    timings["api healthy"] = round(
        wait_until(
            "api healthy (GET /health from its HEALTHCHECK)", lambda: stack.healthy("api"), 90
        ),
        1,
    )
    passed(report, "both task runners and the API turn healthy by their HEALTHCHECKs")

    status, body = http("GET", f"{base}/health")
    assert status == 200, (status, body)
    assert body == {"status": "ok"}, body
    print(f"    GET /health: {status} {body}")
    wait_until("GET /ready answers 200", lambda: http("GET", f"{base}/ready")[0] == 200, 60)
    passed(report, "GET /health and GET /ready answer 200")

    status, schema = http("GET", f"{base}/schema/openapi.json")
    paths = schema.get("paths", {}) if status == 200 and isinstance(schema, dict) else {}
    if "/v1/costs/calculate" in paths:
        status, body = http("POST", f"{base}/v1/costs/calculate", COST_REQUEST)
        assert status == 200, (status, body)
        assert isinstance(body, dict), body
        assert body.get("total"), body
        report["cost"] = {
            "via": "POST /v1/costs/calculate",
            "total": body["total"],
            "model": body.get("model"),
        }
    else:  # the HTTP cost endpoint is not in this build yet: price it in the API container
        calc = stack.exec(
            "api",
            "aiserver-costs",
            "calc",
            COST_MODEL,
            "--input-tokens",
            "1000",
            "--output-tokens",
            "500",
            "--json",
        )
        body = json.loads(calc.stdout)
        assert body.get("total"), body
        report["cost"] = {
            "via": "aiserver-costs calc in the API container (no HTTP route yet)",
            "total": body["total"],
            "model": body.get("model"),
        }
    print(f"    cost of {COST_REQUEST}: {report['cost']}")
    passed(report, "the API serves a cost")

    rows = stack.sql(
        "SELECT app_name || ':' || name || ' ' || count(*) FROM migration "
        "GROUP BY app_name, name ORDER BY 1"
    )
    applied = [line.split() for line in rows.splitlines()]
    assert applied, "no migration recorded"
    assert all(count == "1" for _, count in applied), rows
    logged = sum(
        stack.logs(r).count('"migration applied"') for r in ("taskrunner-1", "taskrunner-2")
    )
    assert logged == len(applied), f"{logged} 'migration applied' log lines for {len(applied)}"
    report["migrations"] = {"applied_once": [name for name, _ in applied], "log_lines": logged}
    print(f"    migrations, each applied once by one of two task runners: {len(applied)}")
    passed(report, "each migration applied once by two task runners starting together")

    models = int(stack.sql("SELECT count(*) FROM ai_model_costs WHERE valid_to IS NULL"))
    assert models > 0, "the catalog was not seeded"
    report["catalog_models_seeded"] = models
    print(f"    catalog seeded from the bundled snapshot: {models} models")
    passed(report, "the catalog is seeded at start-up")

    for role in ("api", "taskrunner-1"):
        uid = stack.exec(role, "id", "-u").stdout.strip()
        assert uid == UID, f"{role} runs as uid {uid}"
    print(f"    processes run as uid {UID}")
    passed(report, f"the services run as uid {UID}")


def docx(*pages: str) -> bytes:
    """The tests' own DOCX writer (tests/support/docs.py, standard library only)."""
    spec = importlib.util.spec_from_file_location("docs", ROOT / "tests" / "support" / "docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    made: bytes = module.docx(*pages)
    return made


def soffice_export(stack: Stack, source: bytes, kind: str) -> bytes:
    """`source` (a DOCX) saved as `kind` by the LibreOffice of a task runner container: the test
    cannot write a binary Word 97 file itself."""
    script = (
        'd=$(mktemp -d) && cat > "$d/in.docx" && HOME="$d" soffice --headless --norestore '
        '--convert-to "$1" --outdir "$d" "$d/in.docx" >/dev/null 2>&1 && cat "$d/in.$1"; '
        'rc=$?; rm -rf "$d"; exit $rc'
    )
    done = subprocess.run(
        ["podman", "exec", "-i", stack.name("taskrunner-1"), "sh", "-c", script, "sh", kind],
        input=source,
        capture_output=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0 or not done.stdout:
        raise AssertionError(f"soffice --convert-to {kind} failed: {done.stderr!r}")
    return done.stdout


def convert_through_the_api(
    stack: Stack, documents: dict[str, tuple[bytes, tuple[str, ...]]]
) -> dict[str, dict[str, Any]]:
    """Upload each document (file name -> content, text of its pages) to the API container, wait
    until a task runner container converted it, and check the PDF, the text and the pages."""
    base = f"http://127.0.0.1:{stack.port}"
    urls = {}
    for filename, (content, _) in documents.items():
        form, content_type = multipart("file", filename, content)
        status, _, raw = fetch("POST", f"{base}/v1/documents", form, content_type)
        assert status == 202, (filename, status, raw[:500])
        urls[filename] = base + json.loads(raw)["status_url"]
    results: dict[str, dict[str, Any]] = {}

    def all_finished() -> bool:
        for filename, url in urls.items():
            if filename not in results:
                status, body = http("GET", url)
                assert status == 200, (filename, status, body)
                if body["status"] in ("done", "failed"):
                    results[filename] = body
        return len(results) == len(urls)

    wait_until(f"{len(urls)} document(s) converted", all_finished, DOCUMENT_TIMEOUT_S)
    converted = {}
    for filename, (_, pages) in documents.items():
        body = results[filename]
        assert (body["status"], body["error"]) == ("done", None), (filename, body)
        assert body["page_count"] == len(pages), (filename, body["page_count"], body["text"])
        assert body["pages_rendered"] == len(pages) == len(body["links"]["pages"]), body
        for text in pages:
            assert text in body["text"], (filename, text, body["text"])
        status, kind, pdf = fetch("GET", base + body["links"]["pdf"])
        assert (status, kind, pdf[:5]) == (200, "application/pdf", b"%PDF-"), (filename, status)
        for link in body["links"]["pages"]:
            status, kind, png = fetch("GET", base + link)
            assert (status, kind, png[:4]) == (200, "image/png", b"\x89PNG"), (link, status)
        by = [
            role
            for role in ("taskrunner-1", "taskrunner-2")
            if any(
                '"document converted"' in line and body["id"] in line
                for line in stack.logs(role).splitlines()
            )
        ]
        assert len(by) == 1, f"{filename}: converted by {by or 'no task runner'}"
        converted[filename] = {"pages": body["page_count"], "pdf": pdf, "by": by[0]}
        print(f"    {filename}: {body['page_count']} page(s), text and PNGs, by {by[0]}")
    return converted


def check_documents(stack: Stack, report: dict[str, Any]) -> None:
    two_pages = docx(*TWO_PAGES)
    rtf = (
        r"{\rtf1\ansi\deff0{\fonttbl{\f0 Times New Roman;}}\f0\fs24 "
        + r"\par\page ".join(RTF_PAGES)
        + r"\par}"
    )
    office = {
        "letter.docx": (two_pages, TWO_PAGES),
        "letter.doc": (soffice_export(stack, two_pages, "doc"), TWO_PAGES),
        "letter.odt": (soffice_export(stack, two_pages, "odt"), TWO_PAGES),
        "letter.rtf": (rtf.encode(), RTF_PAGES),
        "notes.txt": ((TXT_PAGES[0] + "\n").encode(), TXT_PAGES),
    }
    started = time.monotonic()
    converted = convert_through_the_api(stack, office)
    # and a PDF, which goes straight to poppler: the one the docx became
    converted |= convert_through_the_api(
        stack, {"letter.pdf": (converted["letter.docx"]["pdf"], TWO_PAGES)}
    )
    report.setdefault("seconds", {})["documents"] = round(time.monotonic() - started, 1)
    report["documents"] = {
        name: {"pages": entry["pages"], "converted_by": entry["by"]}
        for name, entry in converted.items()
    }
    passed(
        report,
        "docx, doc, odt, rtf, txt and pdf uploaded to the API convert in the task runners",
    )


# -- the images -----------------------------------------------------------------------------------


def layer_sizes(image: str) -> list[int]:
    history = json.loads(run(["podman", "history", "--format", "json", image], quiet=True).stdout)
    return [int(entry.get("size", 0)) for entry in history]  # newest first


def check_images(images: dict[str, str], base: str, report: dict[str, Any]) -> None:
    base_layers = len(layer_sizes(base))
    base_size = sum(layer_sizes(base))
    report["base"] = {"image": base, "bytes": base_size}
    for service in ("api", "taskrunner"):
        image = images[service]
        (inspected,) = json.loads(run(["podman", "image", "inspect", image], quiet=True).stdout)
        config = inspected.get("Config", {})
        labels = config.get("Labels") or {}
        assert labels.get("org.opencontainers.image.title") == f"aiserver-{service}", labels
        healthcheck = inspected.get("Healthcheck") or config.get("Healthcheck")
        assert healthcheck, f"{image}: no HEALTHCHECK (built without --format docker?)"
        assert config.get("User") == f"{UID}:{UID}", config.get("User")
        leftovers = run(
            [
                "podman",
                "run",
                "--rm",
                "--entrypoint",
                "sh",
                image,
                "-c",
                "command -v uv || ls -d /opt/uv /wheelhouse 2>/dev/null || true",
            ],
            quiet=True,
        ).stdout.strip()
        assert not leftovers, f"{image} still holds {leftovers}"
        sizes = layer_sizes(image)
        own = sizes[: len(sizes) - base_layers]
        report[service] = {
            "image": image,
            "bytes": sum(sizes),
            "own_layers_bytes": sum(own),
            "own_layers": [s for s in own if s],
        }
        passed(report, f"{service} image: OCI labels, HEALTHCHECK, user, no uv or wheels")
    print("    labels, HEALTHCHECK, user 10001, no uv or wheelhouse in the final images: ok")


def print_sizes(report: dict[str, Any]) -> None:
    mb = 1_000_000
    base = report["base"]
    print(
        f"\n    {'image':<14}{'total':>10}{'own layers':>14}   "
        f"(MB; base {base['image']}: {base['bytes'] / mb:.1f})"
    )
    for service in ("api", "taskrunner"):
        entry = report[service]
        print(
            f"    {service:<14}{entry['bytes'] / mb:>10.1f}{entry['own_layers_bytes'] / mb:>14.1f}"
            f"   layers: {', '.join(f'{s / mb:.1f}' for s in entry['own_layers'])}"
        )


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]) if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base-image", help="base for both images (default: made locally)")
    parser.add_argument(
        "--no-wheelhouse", action="store_true", help="use dist/api and dist/taskrunner as they are"
    )
    parser.add_argument("--keep", action="store_true", help="leave the containers running")
    parser.add_argument(
        "--skip-if-unavailable",
        action="store_true",
        help="exit 0 with a message where podman & co. are missing",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("CONTAINERS_CONF", str(DEPLOY / "containers.conf"))
    # a `timeout` around this run sends SIGTERM: unwind, so the containers are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    report: dict[str, Any] = {}
    step("hadolint")
    lint_dockerfiles()
    try:
        preflight()
        remove_leftovers()
        step("base image")
        base = base_image(args.base_image)
        print(f"    {base}")
    except Unavailable as exc:
        print(f"image test skipped: {exc}")
        return 0 if args.skip_if_unavailable else 2

    if not args.no_wheelhouse:
        step("wheelhouses")
        build_wheelhouses()
    images = {
        "api": "localhost/aiserver-api:imagetest",
        "taskrunner": "localhost/aiserver-taskrunner:imagetest",
        "backing": "localhost/aiserver-test-backing:imagetest",
    }
    timings = report.setdefault("seconds", {})
    for key, dockerfile in (
        ("api", "API.Dockerfile"),
        ("taskrunner", "TaskRunner.Dockerfile"),
        ("backing", "TestBacking.Dockerfile"),
    ):
        step(f"podman build {dockerfile}")
        if key != "backing":  # a tag keeps the builder stage's layers (apt, uv) for the next run
            builder = images[key].replace(":", "-builder:")
            build_image(dockerfile, builder, base, labels=False, target="builder")
        timings[f"build {key}"] = round(
            build_image(dockerfile, images[key], base, labels=key != "backing"), 1
        )
    # what earlier runs left: old builder stages and images these tags no longer name
    run(
        [
            "podman",
            "image",
            "prune",
            "--force",
            "--filter",
            "label=org.opencontainers.image.vendor=aiserver",
        ],
        check=False,
    )

    step("image checks")
    check_images(images, base, report)
    stack = Stack(images, free_port())
    try:
        bring_up(stack)
        step("stack checks")
        check_stack(stack, report)
        step("documents: uploaded to the API, converted by the task runners")
        check_documents(stack, report)
    except Exception:
        print(f"image-test: {len(report.get('checks', []))} passed, 1 failed")
        for role in ("taskrunner-1", "taskrunner-2", "api"):
            if stack.name(role) in stack.names:
                print(
                    f"\n--- logs of {role} (last 40 lines) ---\n"
                    + "\n".join(stack.logs(role).splitlines()[-40:])
                )
        raise
    finally:
        if args.keep:
            print(f"\nleft running: {', '.join(stack.names)} (API on 127.0.0.1:{stack.port})")
        else:
            stack.remove()

    timings["total"] = round(time.monotonic() - started, 1)
    print_sizes(report)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nimage test passed in {timings['total']:.0f} s; report: {REPORT.relative_to(ROOT)}")
    print(f"image-test: {len(report['checks'])} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
