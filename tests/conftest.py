import os

from hypothesis import HealthCheck, settings

# no test may reach a model hub or W&B
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

# no test may depend on the machine's speed: hypothesis's 200 ms deadline per example and
# its too-slow health check both measure it
settings.register_profile("any_speed", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("any_speed")
