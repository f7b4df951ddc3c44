"""Every docstring example of the packages runs and gives the output it shows (as
`pytest --doctest-modules` would), so the examples in the reference docs cannot go stale."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("tracer", "ir", "exporters", "runtime", "models", "castml_cli")
GENERATED = ("runtime.format.castml_fb",)  # flatc's output (tests/test_castml_format.py checks it)


def _modules() -> list[str]:
    names = []
    for pkg in PACKAGES:
        names.append(pkg)
        for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + "."):
            if not info.name.startswith(GENERATED) and not info.name.endswith(".__main__"):  # (runs the CLI)
                names.append(info.name)
    return sorted(names)


MODULES = _modules()


def test_the_packages_are_all_there():
    assert len(MODULES) > 150 and "runtime.kernels.special" in MODULES and "tracer.methods" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
