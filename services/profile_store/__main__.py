"""Run the profile_store service: python -m services.profile_store."""

import sys

from shared.runner import run_service

sys.exit(run_service("profile_store"))
