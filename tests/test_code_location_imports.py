"""Every run under the daemon is a new process that imports the code location: it must not
pay for torch (seconds of CPU and hundreds of MB) unless it trains or generates."""

import subprocess
import sys


def test_definitions_import_without_torch():
    code = (
        "import sys, flywheel_assets.definitions\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"the code location imported {out.stdout.strip()}"
