"""Example fleet configs; they ship with servomesh (`servomesh demo` runs arm.toml)."""
