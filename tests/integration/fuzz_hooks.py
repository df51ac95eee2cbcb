"""schemathesis hooks for tests/integration/test_fuzz.py, loaded through `SCHEMATHESIS_HOOKS`:
schemathesis' own "not a server error" check, less the one server error the gateway owes: a
504 for a deadline too short to meet; and no multipart body with a field whose value is an empty
list, which schemathesis sends as no field at all (an invalid case that reaches the gateway as a
valid one). No I/O of its own.
"""

from __future__ import annotations

from typing import Any

import schemathesis

TOO_SHORT_MS = 50  # a deadline this short may honestly end in 504


@schemathesis.check
def no_server_error_but_a_missed_short_deadline(ctx: Any, response: Any, case: Any) -> None:
    """Every 5xx fails, except a 504 `deadline_exceeded` for a deadline under TOO_SHORT_MS."""
    if response.status_code < 500:
        return
    body = case.body if isinstance(case.body, dict) else {}
    deadline = body.get("deadline_ms")
    short = isinstance(deadline, int | float) and not isinstance(deadline, bool) and deadline < TOO_SHORT_MS
    if not (response.status_code == 504 and short and "deadline_exceeded" in response.text):
        raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")


@schemathesis.hook
def filter_body(ctx: Any, body: Any) -> bool:
    """Skip multipart bodies (the file upload's) holding an empty list: schemathesis sends one
    part per item, so that field is not sent, and the case it meant to be invalid arrives valid."""
    if ctx.operation is None or ctx.operation.path != "/v1/files" or not isinstance(body, dict):
        return True
    return not any(value == [] for value in body.values())
