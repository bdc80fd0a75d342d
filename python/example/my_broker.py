#!/usr/bin/env python3
# coding: utf-8
"""Runs a broker with the workers of `workers.py` and the store of `file_store.py`.

pypelinin's example broker, ported to Python 3. The router's addresses default to
pypelinin's (localhost:5555 and 5556); PYPELININ_API and PYPELININ_BROADCAST
override them.
"""

import os
from logging import Logger, StreamHandler, Formatter
from multiprocessing import cpu_count
from sys import stdout

from pypelinin import Broker

from file_store import SimpleFileStore


def main():
    logger = Logger('Broker')
    handler = StreamHandler(stdout)
    formatter = Formatter('%(asctime)s - %(name)s - %(levelname)s - '
                          '%(message)s')
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    broker = Broker(api=os.environ.get('PYPELININ_API', 'tcp://localhost:5555'),
                    broadcast=os.environ.get('PYPELININ_BROADCAST',
                                             'tcp://localhost:5556'),
                    # class that will be called to retrieve/store information
                    # to pass to/to save from worker
                    store_class=SimpleFileStore,
                    logger=logger,
                    # name of the module that contains the workers
                    workers='workers',
                    # each core runs 4 worker processes
                    number_of_workers=cpu_count() * 4)
    broker.start()


if __name__ == '__main__':
    main()
