"""Engines that spread work over a cluster (Ray Data) and their command-line options.

This module stays light (the CLI imports it to build its parser); `ray_engine` holds the engine and
imports Ray only when it runs, so `import lookalike` never needs Ray.
"""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass

from lookalike.errors import LookalikeError

NEEDS_RAY = "the Ray engine needs Ray: pip install 'lookalike[scale]'"


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray: `address` of a running cluster (None: start a local Ray on `num_cpus` cores),
    `num_actors` encoder actors (default: one per CPU), rows per `batch_size`, cache `shard_size`."""

    address: str | None = None
    num_cpus: int | None = None
    num_actors: int | None = None
    batch_size: int = 64
    shard_size: int = 4096

    @classmethod
    def from_args(cls, args: argparse.Namespace, batch_size: int) -> RayOptions | None:
        """From the options `add_engine_options` adds (`batch_size` unless --batch-size): None for local.
        A missing Ray or an unreachable --address fails here, before the catalogue is read."""
        if args.engine != "ray":
            if args.address or args.num_actors or args.num_cpus:
                raise LookalikeError("--address, --num-actors and --num-cpus need --engine ray")
            return None
        if importlib.util.find_spec("ray") is None:
            raise LookalikeError(NEEDS_RAY)
        if args.address:
            from lookalike.distributed.ray_engine import check_reachable

            check_reachable(args.address)  # before the catalogue is read
        return cls(args.address, args.num_cpus, args.num_actors, args.batch_size or batch_size, args.shard_size)


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """`--engine local|ray` and the Ray engine's options, for `embed` and `catalog ingest`."""
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process (default); ray: Ray Data actors (needs lookalike[scale])",
    )
    p.add_argument(
        "--address",
        help="Ray cluster to join (host:port, ray://host:port or auto); "
        "default: start a local Ray on this machine's cores",
    )
    p.add_argument("--num-cpus", type=int, help="cores of the local Ray (default: all); ignored with --address")
    p.add_argument("--num-actors", type=int, help="encoder actors (default: one per CPU of the cluster)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: the config's, 64)")
    p.add_argument(
        "--shard-size",
        type=int,
        default=4096,
        help="new vectors per cache shard on Ray (a killed job loses at most one shard's worth)",
    )
