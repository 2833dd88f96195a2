"""Every run under the daemon is a new process that imports the code location: it must not
pay for torch (seconds of CPU and hundreds of MB) unless it trains or generates, nor for
scipy, scikit-learn and datasketch (about half a second) unless a step computes with them."""

import ast
import subprocess
import sys


def imported_by_the_code_location(modules: tuple[str, ...]) -> list[str]:
    code = f"import sys, flywheel_assets.definitions\nprint(sorted(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return ast.literal_eval(out.stdout.strip())  # the printed list of module names


def test_definitions_import_without_torch():
    imported = imported_by_the_code_location(("torch", "transformers", "peft"))
    assert imported == [], f"the code location imported {imported}"


def test_definitions_import_without_the_statistics_libraries():
    imported = imported_by_the_code_location(("scipy", "sklearn", "datasketch"))
    assert imported == [], f"the code location imported {imported}"
