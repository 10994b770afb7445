"""Summarises py-spy raw profiles of the operator (`operator_scale.py --profile raw`): the share of
samples by part of the operator (first matching frame wins), and the top functions by self and by
total samples. Take profiles made with `--profile-gil`: without it a thread blocked in a TLS read, on
a lock or waiting for the GIL counts as busy, and the shares are wall time by thread, not CPU.

    python bench/profile_parts.py before.txt after.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

PARTS = (
    ("start-up imports", ("_find_and_load",)),
    ("kopf watch streams (read + JSON parse)", ("watcher (kopf/_core/reactor/queueing.py", "continuous_watch (")),
    ("our watch handlers (inside kopf's processing)",
     ("job_changed (", "trainer_pod_changed (", "node_changed (", "pods_index (", "nodes_index (")),
    ("kopf per-event processing (worker, causes, handler calls)", ("worker (kopf/_core/reactor/queueing.py",)),
    ("scheduling pass", ("Controller.run_pass (",)),
    ("claims + pod creation (admission)", ("Admitter.", "Claims.")),
    ("queue positions + start estimates", ("Controller.write_positions (", "Controller.position_loop (")),
    ("reconcile: result reads from storage", ("Lifecycle.reports (", "Lifecycle.sync_progress (")),
    ("reconcile: resolve", ("Lifecycle.resolve (",)),
    ("reconcile: other (status writes, pod deletes, classify)",
     ("Lifecycle.", "Controller.reconcile (", "Controller.recover (")),
    ("Events posting", ("Kube._post_events (",)),
    ("follow loop (its asyncio part; its reconciles run on threads: see reconcile)", ("Follower.",)),
    ("metrics server", ("serve_forever (",)),
)
OTHER = "other (asyncio loop, thread hand-offs, kopf peering and posting)"


def read(path: str) -> list[tuple[list[str], int]]:
    """(frames, samples) per line of a py-spy raw file: frames root first, thread frames dropped."""
    stacks = []
    with open(path) as lines:
        for line in lines:
            stack, _, count = line.rstrip().rpartition(" ")
            if stack:
                frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
                stacks.append((frames, int(count)))
    return stacks


def short(frame: str) -> str:
    """`function (file)` with the file under site-packages or the package root, no line number."""
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    function, path = match.groups()
    path = re.sub(r".*site-packages/|.*/operator/|.*/lib/python3\.\d+/", "", path)
    return f"{function} ({path})"


def parts(stacks: list[tuple[list[str], int]]) -> Counter[str]:
    shares: Counter[str] = Counter()
    for frames, count in stacks:
        joined = ";".join(frames)
        shares[next((name for name, keys in PARTS if any(k in joined for k in keys)), OTHER)] += count
    return shares


def tops(stacks: list[tuple[list[str], int]]) -> tuple[Counter[str], Counter[str]]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for frames, count in stacks:
        names = [short(f) for f in frames]
        if names:
            own[names[-1]] += count
        for name in set(names):
            total[name] += count
    return own, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    loaded = [read(p) for p in args.profiles]
    sums = [sum(c for _, c in s) for s in loaded]
    shares = [parts(s) for s in loaded]
    print("| part | " + " | ".join(args.profiles) + " |\n|---|" + "---|" * len(loaded))
    for name in [n for n, _ in PARTS] + [OTHER]:
        cells = (f"{s[name] / n * 100:.1f} %" for s, n in zip(shares, sums, strict=True))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| samples | " + " | ".join(str(n) for n in sums) + " |")
    for path, stacks, n in zip(args.profiles, loaded, sums, strict=True):
        own, total = tops(stacks)
        print(f"\n{path}: self")
        for name, count in own.most_common(args.top):
            print(f"  {count / n * 100:5.1f} %  {name}")
        print(f"{path}: total")
        for name, count in total.most_common(args.top * 2):
            print(f"  {count / n * 100:5.1f} %  {name}")


if __name__ == "__main__":
    main()
