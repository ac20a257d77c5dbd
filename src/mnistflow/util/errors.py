"""Expected failures: one clear line for the user, a documented exit code, no traceback.

Every error a user can fix (bad params, bad data, an unreachable store, a bad image...) is a
:class:`UserError` subclass with its own ``exit_code``; anything else is a bug and keeps its
traceback. Exit codes (also in docs/faults.md):

====  ==========================================================
0     success
1     a comparison came out different (``mnistflow reproduce``), or a queued experiment failed
2     bad params, bad command-line input (such as a run id the store does not have) or a
      missing/unreadable file
3     bad or unreachable data (download mirrors, IDX files)
4     the MLflow tracking store cannot be used (down or lost mid-run, locked, credentials)
5     an external tool failed (git, dvc)
6     no room to write an output (disk full, quota, file-size limit); earlier outputs stay
7     a comparison came out different and the two runs were computed under different
      floating-point environments (``mnistflow reproduce``; mnistflow.numerics)
130   interrupted by SIGINT (Ctrl-C); 143: by SIGTERM
====  ==========================================================
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can fix; the message names the file, key or URI."""

    exit_code = 2
