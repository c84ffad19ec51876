"""Not shipped: real local processes (server, workers, PostgreSQL, nginx) for the tests, the benchmarks and
``make demo``. It lives beside the packages, not in ``plada``, so an installed server carries no test harness.

Tests import it as ``harness.local`` (pytest puts the repository root on ``sys.path``); scripts under
``bench/`` add the repository root themselves.
"""
