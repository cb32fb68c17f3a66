"""Per-key and per-user limits: request rate, concurrency and daily budgets (see enforcer.py)."""
