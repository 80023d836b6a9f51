"""Smoke test of the attempt table (``python -m benchmarks.reliability``): the option attempts of ``ajpq search``,
each in its forked sandbox, all refused clearly."""

from __future__ import annotations

from benchmarks.reliability.__main__ import main


def test_attempt_table_smoke(capsys):
    assert main(["--only", "search: options"]) == 0
    out = capsys.readouterr().out
    assert "| search: options | --threads 0 | clear error |" in out
    assert " 0 traceback, 0 silent wrong, 0 hang, 0 data loss, 0 code execution" in out
