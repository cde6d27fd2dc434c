"""Fixtures of the search tests: a throw-away PostgreSQL server (``postgres``) and a database per test (``pg_url``)."""

from tests.search.pg_server import pg_url, postgres  # noqa: F401 - fixtures
