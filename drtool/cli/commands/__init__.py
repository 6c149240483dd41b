"""One module per top-level command (noun); each has ``register(cli)``.  They import ``drtool.api``,
``drtool.errors`` and ``drtool.cli`` only (tests/test_layering.py)."""
