"""PostgreSQL: models, sessions, and the small queries that move a job through its states."""
