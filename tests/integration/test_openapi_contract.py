"""The OpenAPI schema tells the truth: schemathesis generates requests for every operation from
/openapi.json and runs every check it has against the real app (real PostgreSQL and Redis).

Bounded (a fixed seed and a few dozen examples per operation) so the suite stays fast; run
`VOICEFARM_FUZZ_EXAMPLES=500 pytest tests/integration/test_openapi_contract.py` for a long run.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from schemathesis.config import SchemathesisConfig

EXAMPLES = int(os.environ.get("VOICEFARM_FUZZ_EXAMPLES", "25"))

# Every check is on. Positive data (schema-valid requests) may still meet a 422 whose code names
# a rule the schema cannot state: a voice the engine doesn't offer, markup the engine can't
# read, text with nothing to speak, a private webhook host. Those answers are 4xx with a code,
# never 5xx, and `not_a_server_error` stays strict. Likewise a well-formed but forged cursor is a
# 400 `invalid_cursor`: a cursor is opaque, so no schema can say which strings are real.
CONFIG = f"""
seed = 20261129

[generation]
max-examples = {EXAMPLES}
database = "none"

[checks]
enabled = true

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "400", "401", "404", "409", "422", "429"]
"""


def _schema() -> Any:
    from api.main import create_app

    return schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(), config=SchemathesisConfig.from_str(CONFIG)
    )


schema = _schema()


@schema.parametrize()
def test_every_operation_honours_its_schema(case: Any, database: str, redis_client: Any) -> None:
    # Session-scoped fixtures (a function-scoped one would not be reset between examples);
    # rows the fuzzing leaves behind are truncated by the next test's `db` fixture.
    case.call_and_validate()
