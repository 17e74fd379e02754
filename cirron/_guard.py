"""Cirron's own failures: counted and kept away from the host program, raised again under pytest.

Outside tests a failure inside cirron must never reach the caller: it is counted in
``health()["internal_errors"]`` and the program goes on. Under pytest (``PYTEST_CURRENT_TEST`` is
set) the same failure is raised again, so a bug in cirron fails the test that met it instead of
hiding behind a counter. A test that provokes internal errors on purpose says so in its name
(``internal_error`` in it) and gets the counting behaviour.
"""

from __future__ import annotations

import os

#: Set by pytest while a test runs.
PYTEST_TEST_ENV = "PYTEST_CURRENT_TEST"
#: A test whose name contains this expects cirron's own errors and checks that they are counted.
EXPECTED_IN_TEST_NAME = "internal_error"


def reraise_internal_errors() -> bool:
    """Whether cirron's own failures are raised again (in a pytest test that does not expect them)."""
    test = os.environ.get(PYTEST_TEST_ENV)
    return test is not None and EXPECTED_IN_TEST_NAME not in test
