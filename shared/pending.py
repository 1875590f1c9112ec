"""RPCs whose issue is still open: they answer UNIMPLEMENTED until implemented.

This is the one list; tests/test_rpc_coverage.py checks that every other RPC
is implemented and that every RPC here is not. It shrinks to nothing.
"""

from __future__ import annotations

PENDING_RPCS: frozenset[str] = frozenset()
