"""`lora-operator run`: the operator process (kopf), cluster-wide or for one namespace."""

from __future__ import annotations

import argparse
import logging
import random
import sys

from . import heap
from .config import ConfigError, OperatorConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora-operator", description="The LoraTrainingJob operator.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="watch LoraTrainingJobs and run them on GPU nodes")
    run.add_argument("--namespace", default=None, help="watch one namespace (default: LORA_WATCH_NAMESPACE or all)")
    run.add_argument("--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    run.add_argument("--standalone", action="store_true", help="no peering (a single replica, for development)")
    run.add_argument("--priority", type=int, default=None,
                     help="peering priority; default: random, so replicas never tie (kopf pauses all on a tie)")
    run.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = OperatorConfig.from_env()
    except ConfigError as err:
        print(f"lora-operator: {err}", file=sys.stderr)
        return 2
    heap.cap_arenas(config.malloc_arenas)  # before any thread starts

    import kopf

    from . import handlers  # noqa: F401 - registers the handlers

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # kopf logs each handler's success at INFO: a line per watch event, a share of the event
        # loop that grows with the jobs (bench/RESULTS.md). Failures and retries are warnings
        # and errors, and still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    heap.tune_collector()
    namespace = args.namespace or config.watch_namespace or None
    kopf.run(
        clusterwide=namespace is None,
        namespaces=[namespace] if namespace else (),
        standalone=args.standalone,
        peering_name=None if args.standalone else config.peering_name,
        priority=args.priority if args.priority is not None else random.randint(1, 1_000_000),
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(watch_namespace=namespace),  # where the first pass lists the jobs (`startup_listing`)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
