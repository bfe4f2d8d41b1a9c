"""Shared fixtures: each area keeps its own in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.net",
    "tests.fixtures.s3",
    "tests.fixtures.tcp_proxy",
    "tests.fixtures.controller",
    "tests.fixtures.data",
]
