"""Fault-injection scenarios: real processes, real PostgreSQL and redis-server, real loopback.

Each scenario prints its figures. The fast ones run in `make test`; those marked `faults`
(long runs, many rounds) run with `make faults`.
"""
