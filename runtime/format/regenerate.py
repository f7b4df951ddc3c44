"""Regenerate `castml_fb/` (the flatc Python code for `castml.fbs`), which is committed.

The generated code is checked in so that the runtime needs only the `flatbuffers` package, not
the compiler; `tests/test_castml_format.py` runs this script into a temporary folder and fails
when the result differs from what is committed, so schema and code cannot drift apart.

    python runtime/format/regenerate.py            # rewrite runtime/format/castml_fb/
    python runtime/format/regenerate.py --out DIR  # write DIR/castml_fb/ instead
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "castml.fbs"
PACKAGE = "castml_fb"


def regenerate(out_dir: Path = HERE, flatc: str = "flatc") -> Path:
    """Run `flatc --python` on the schema and place the package at `out_dir/castml_fb`.

    flatc writes one folder per namespace component (`runtime/format/castml_fb`, plus empty
    `__init__.py` files for `runtime` and `runtime/format` that must not overwrite ours), so it
    runs into a scratch folder and only the package is copied out.

    >>> regenerate(Path("/tmp/x"))  # doctest: +SKIP
    PosixPath('/tmp/x/castml_fb')
    """
    target = Path(out_dir) / PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([flatc, "--python", "-o", tmp, str(SCHEMA)], check=True, capture_output=True)
        generated = Path(tmp) / "runtime" / "format" / PACKAGE
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(generated, target)
    return target


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder that receives castml_fb/")
    parser.add_argument("--flatc", default="flatc", help="the flatc executable")
    args = parser.parse_args()
    print(regenerate(args.out, args.flatc))


if __name__ == "__main__":
    main()
