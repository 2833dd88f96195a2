"""``python -m flywheel_assets.sample_data``: the same as ``flywheel-sample-traces``."""

import sys

from flywheel_assets.sample_data.cli import main

sys.exit(main())
