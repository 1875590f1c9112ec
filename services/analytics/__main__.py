"""Run the analytics service: python -m services.analytics."""

import sys

from shared.runner import run_service

sys.exit(run_service("analytics"))
