"""Refresh the price snapshot bundled in aiserver-costs from the published `litellm` wheel.

    hatch run snapshot                # the newest litellm release
    hatch run snapshot --version 1.110.2

Downloads the wheel with pip (no install), takes
`litellm/model_prices_and_context_window_backup.json` and the wheel's license, and writes
them to `src/aiserver/costs/data/`:

- `model_prices_and_context_window.json.gz`: gzip with a fixed mtime, so the same input gives the
  same bytes (reproducible wheels);
- `NOTICE`: where the data came from, and LiteLLM's license text (MIT for this file).

The script refuses a document that aiserver's own parser rejects.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "src" / "aiserver" / "costs" / "data"
MEMBER = "litellm/model_prices_and_context_window_backup.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", help="litellm release to take the data from (default: newest)")
    args = parser.parse_args()
    requirement = f"litellm=={args.version}" if args.version else "litellm"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "--dest", tmp, "--quiet", requirement],
            check=True,
        )  # fmt: skip
        (wheel,) = Path(tmp).glob("litellm-*.whl")
        version = wheel.name.split("-")[1]
        with zipfile.ZipFile(wheel) as archive:
            body = archive.read(MEMBER)
            license_name = next(
                n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")
            )
            license_text = archive.read(license_name).decode()

    from aiserver.costs.source import parse_source

    parsed = parse_source(body)
    (DATA / "model_prices_and_context_window.json.gz").write_bytes(
        gzip.compress(body, compresslevel=9, mtime=0)
    )
    (DATA / "NOTICE").write_text(
        "model_prices_and_context_window.json.gz\n"
        f"  is {MEMBER} from the litellm {version} wheel published on PyPI,\n"
        "  gzip-compressed, unmodified otherwise. Refresh it with `hatch run snapshot`\n"
        "  (packages/costs/scripts/update_snapshot.py).\n"
        f"  {len(parsed.models)} models, {len(parsed.aliases)} aliases, "
        f"{len(parsed.skipped)} entries skipped by aiserver's parser.\n\n"
        "LiteLLM's license (the data file lies outside its enterprise/ directory: MIT):\n\n"
        + license_text
    )
    print(f"snapshot: litellm {version}, {len(body)} bytes, {len(parsed.models)} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
