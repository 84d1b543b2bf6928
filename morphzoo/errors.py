"""morphzoo's error types: every error the library raises on bad input is a :class:`MorphzooError`.

Each names the thing that is wrong (a file, an entry, a setting) and, where there is one, the fix. Library errors from
deep inside a parser (plyfile, h5py, zipfile, yaml, json) are caught at the reader and re-raised as one of these, with
the original chained as the cause.
"""

from __future__ import annotations


class MorphzooError(Exception):
    """The base of morphzoo's own errors."""


class DataError(MorphzooError, ValueError):
    """A dataset or mesh file (or what it holds) is missing, truncated, garbled or inconsistent with its template."""
