"""arviz, imported so that processes starting together do not fail on its daily notice.

arviz 0.23 prints a notice about its refactor once a day and records the day in
``<user cache>/arviz/daily_warning``, written through ``daily_warning.tmp`` and a rename.
Two processes importing arviz at the same moment on a day with no record yet (the two
pytest-xdist workers of a clean CI machine; parallel fits) both write the temporary file;
the first rename moves it away and the second raises ``FileNotFoundError``, which fails
the import. By then the other process has recorded the day, so importing again skips the
notice and succeeds. Any other error is raised as it is.
"""

from __future__ import annotations


def _import():
    try:
        import arviz
    except FileNotFoundError as error:
        if "daily_warning" not in f"{error.filename}{error.filename2}":
            raise
        import arviz  # the day is recorded now: the notice, and its write, are skipped
    return arviz


az = _import()
