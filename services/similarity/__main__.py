"""Run the similarity service: python -m services.similarity."""

import sys

from shared.runner import run_service

sys.exit(run_service("similarity"))
