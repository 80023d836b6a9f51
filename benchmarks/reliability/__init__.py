"""The attempt table of issue 10, re-run: what a hostile or careless user tries, and how each attempt ends.

Every attempt runs in a forked child (its own sandbox folder, an 8 GiB address-space limit, a timeout) and is
classified as one of :data:`VERDICTS`:

* ``fine`` — a valid use worked and its result checks out;
* ``clear error`` — refused with exit code 2 (or ``ValueError``/``TypeError`` from the library) and a message
  naming what was wrong (the attempt's keywords);
* ``unclear error`` — refused, but the message does not say what was wrong, or another exit code;
* ``traceback`` — an exception escaped, or a traceback was printed;
* ``silent wrong`` — a bad input accepted, or a valid one giving a wrong result;
* ``hang`` — past the timeout, or killed (memory blow-up);
* ``data loss`` — a file outside the command's output changed, or a failed command changed its input;
* ``code execution`` — the marker file of a poisoned pickle appeared.

    python -m benchmarks.reliability                 # every attempt; Markdown table and counts
    python -m benchmarks.reliability --only search   # the attempts whose group starts with "search"

Run it on a quiet machine when reporting the seconds column (the checks before loading are timed in-process).
The attempts live in :mod:`~benchmarks.reliability.search_attempts`, :mod:`~benchmarks.reliability.env_attempts`
and :mod:`~benchmarks.reliability.deploy_attempts`; :mod:`~benchmarks.reliability.harness` runs and judges them.
"""
