"""``python -m benchmarks.reliability``: run every attempt, print the Markdown table and the counts per verdict."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from benchmarks.reliability import deploy_attempts, env_attempts, harness, search_attempts
from benchmarks.reliability.harness import VERDICTS, Attempt, Inputs, Outcome, run_isolated

__all__ = ["main"]

#: groups whose attempts make their own inputs (the shared run, fine-tune and export are not built for them)
SELF_CONTAINED = ("search: options", "env", "data")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-run the attempt table of issue 10 and count the verdicts.")
    parser.add_argument("--only", default="", help="run only the attempts whose group starts with this")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ajpq-attempts-") as tmp:
        root = Path(tmp)
        os.environ["AJPQ_CACHE"] = str(root / ".cache")
        every = [*search_attempts.attempts(), *env_attempts.attempts(), *deploy_attempts.attempts()]
        selected = [a for a in every if a.group.startswith(args.only)]
        if not all(a.group.startswith(SELF_CONTAINED) for a in selected):
            start = time.perf_counter()
            harness.INPUTS = Inputs(root / "inputs")
            print(f"inputs made in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        results: list[tuple[Attempt, Outcome]] = []
        for i, attempt in enumerate(selected, 1):
            outcome = run_isolated(attempt, root)
            results.append((attempt, outcome))
            print(f"[{i}/{len(selected)}] {attempt.group} | {attempt.name}: {outcome.verdict} ({outcome.seconds:.2f} s)"
                  + (f" -- {outcome.detail}" if outcome.verdict not in ("fine", "clear error") else ""), file=sys.stderr)
    counts = Counter(o.verdict for _, o in results)
    lines = ["| group | attempt | verdict | seconds | message |", "|---|---|---|---:|---|"]
    lines += [f"| {a.group} | {a.name.replace('|', '/')} | {o.verdict} | {o.seconds:.2f} | "
              f"{o.detail.replace('|', '/').replace(chr(10), ' ')[:140]} |" for a, o in results]
    lines += ["", f"{len(results)} attempts: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)]
    refusals = [o.seconds for a, o in results if a.group.startswith("search: options") and o.verdict == "clear error"]
    if refusals:
        lines.append(f"search option refusals (in-process, before any env loads): at most {max(refusals):.3f} s")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all(counts.get(v, 0) == 0 for v in ("traceback", "silent wrong", "hang", "data loss",
                                                    "code execution")) else 1


if __name__ == "__main__":
    sys.exit(main())
