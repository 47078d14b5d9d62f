"""Load, faults and soak over a local Saguaro stack of real processes.

The chaos tests (``tests/chaos``), the CI soak (``tests/soak``) and the benchmarks
(``bench/soak.py``, ``bench/chaos.py``) drive the same stack with the same load generator and
judge every request the same way, so the code lives here, outside the installed library: the
benchmarks put ``bench/harness`` on ``sys.path`` (they run as scripts and cannot import the test
tree), the tests reach it through pytest's ``pythonpath`` (pyproject.toml).

* ``stack``: redis-server, N (``saguaro draft``, ``saguaro target --mode ssd``) pairs and a
  ``saguaro gateway``, each a child process on fixed loopback ports, so killing one and starting
  the same command again is what a pod restart looks like to the others.
* ``workload``: seeded prompts and their target-only greedy tokens.
* ``load``: N concurrent greedy streaming requests through the gateway (the async SDK), each
  judged against the reference (``judge``), and the run's summary.
* ``faults``: SIGKILL or SIGSTOP/SIGCONT one service at a seeded random point under load,
  restore it, and count the outcomes.
* ``measure``: every process's memory, Prometheus counters, the JSON report.

Outcomes: ``completed`` (output identical to the reference), ``failed_retryable`` (a retryable
error before the first token: the client may send the request again), ``failed`` (any other
failure: an error after tokens were streamed, or a non-retryable one; never acceptable) and
``corrupted`` (a token that differs from the reference, or a missing or repeated one).
"""
