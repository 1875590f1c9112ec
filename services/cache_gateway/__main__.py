"""Run the cache_gateway service: python -m services.cache_gateway."""

import sys

from shared.runner import run_service

sys.exit(run_service("cache_gateway"))
