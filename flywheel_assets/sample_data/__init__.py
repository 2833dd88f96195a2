"""Seeded generator of realistic production LLM traffic (see ``generator``)."""

from flywheel_assets.sample_data.generator import *  # noqa: F403
from flywheel_assets.sample_data.generator import __all__  # noqa: F401
