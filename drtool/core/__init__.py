"""Core of the use cases: the open session (repository + catalog + host) every use case starts
from, and the data-path runtime settings they share (``heap``: the garbage collector paused over
the backup and restore data paths).  Imports nothing above the sources layer."""
