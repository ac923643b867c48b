"""Engine capabilities as the workers' engine classes declare them (see core.engines.catalog)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.engines import EngineSpec
from db.models import EngineRegistration


def register(session: Session, spec: EngineSpec, worker_id: str) -> None:
    stmt = insert(EngineRegistration).values(
        name=spec.name, spec=spec.to_json(), worker_id=worker_id
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[EngineRegistration.name],
            set_={"spec": stmt.excluded.spec, "worker_id": worker_id, "updated_at": func.now()},
        )
    )


def registered_specs(session: Session) -> dict[str, EngineSpec]:
    rows = session.execute(select(EngineRegistration.name, EngineRegistration.spec)).all()
    return {name: EngineSpec.from_json(spec) for name, spec in rows}
