"""The migrations and the models describe one schema.

The test database is made by the real migrations (tests/conftest.py); alembic's autogenerate
compares it with db/models.py. A model change without its migration (or the reverse) fails
here rather than in production, where the code would meet a schema it does not expect.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from db.models import Base
from db.session import get_engine


def test_the_migrated_schema_is_the_models_schema(db: str) -> None:
    with get_engine(db).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], "\n".join(map(str, diff))
