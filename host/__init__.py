"""Host orchestrator (CPython only)."""
