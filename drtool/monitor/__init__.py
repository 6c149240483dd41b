"""Monitoring: freshness and RPO per source (``status``, Nagios codes), Prometheus ``metrics``,
failure ``notify`` hooks, and ``validate`` (does a storage behave as drtool needs)."""
