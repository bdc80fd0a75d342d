"""S9 of `bench`: a broker written as a pypelinin user writes one, `pypelinin.Broker`
with the workers of `bench_workers` and a minimal store, in place of the bench's Rust
broker. `bench` starts it with `--api`, `--broadcast` and `--workers` (its slots) and
stops it with SIGTERM; its worker processes are its children, so that `bench` counts
their CPU with the broker's.
"""

import argparse
import logging
import sys

from pypelinin import Broker


class BenchStore(object):
    """The least a store does: the input is the job's data the worker requires. The
    output needs no saving here: the broker reports it to the router anyway, which
    keeps it (the cluster's default store), and `bench` checks it there.

    `bench`'s router has no store configuration, so the broker calls `BenchStore()`."""

    def __init__(self, **configuration):
        self.configuration = configuration

    def retrieve(self, info):
        return {key: info['data'][key] for key in info['worker_requires']}

    def save(self, info):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--api', required=True)
    parser.add_argument('--broadcast', required=True)
    parser.add_argument('--workers', type=int, default=2)
    args = parser.parse_args()
    # Errors only: the broker logs a line per job at INFO, and a warning that the
    # router has no store configuration, which is what the bench wants.
    logging.basicConfig(stream=sys.stderr, level=logging.ERROR)
    Broker(api=args.api, broadcast=args.broadcast, store_class=BenchStore,
           workers='bench_workers', number_of_workers=args.workers,
           drain_timeout=2.0).start()


if __name__ == '__main__':
    main()
