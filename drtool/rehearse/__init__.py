"""Restore rehearsals (DR drills): runbooks, sandboxes, validation, measured RTO/RPO, reports.

``runbook`` parses a drill's TOML, ``drill`` runs it, ``sandbox`` / ``sandbox_db`` provide the
throwaway directories and database servers it restores into, ``report`` renders the history.
"""
