"""Output folders that only the command which wrote them may replace (eval, embed; the rules live in
cytoself_jax/staging.py, shared with the crop store writer and prepare's QC report).

A command writes into a hidden sibling ``.<name>.tmp-<pid>`` that carries a marker file naming the command, then
renames it into place, so a failed or killed run never leaves a partial folder. An existing folder is replaced
only when it is empty or carries the same command's marker and nothing besides the files the marker lists: a run
directory, a data folder, any folder with other files (or a user's file added to an output) is refused, never
deleted. Stale temporary folders of killed processes (marker present, process gone on this host) are removed when
the command next writes beside them.
"""
from __future__ import annotations

from cytoself_jax.staging import (MARKER, OutputFolderError, check_replaceable, clean_stale, commit, read_marker,
                                  staging_folder)

__all__ = ["MARKER", "OutputFolderError", "check_replaceable", "clean_stale", "commit", "read_marker",
           "staging_folder"]
