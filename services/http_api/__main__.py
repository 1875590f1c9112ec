"""Run the HTTP/JSON API: python -m services.http_api."""

import sys

from services.http_api.server import main

sys.exit(main())
