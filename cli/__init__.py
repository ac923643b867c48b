"""The `voicefarm` command: `say`, `workers`, `migrate`, `farm` (what `make run` starts)."""
