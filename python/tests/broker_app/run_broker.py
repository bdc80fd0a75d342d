"""The tests' broker: `app_workers` with `DirectoryStore`, two worker processes."""

import logging
import os
import sys

from pypelinin import Broker

from app_store import DirectoryStore


def main():
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format='%(asctime)s - %(name)s - %(levelname)s - %(message)s')
    Broker(api=os.environ['PYPELININ_API'], broadcast=os.environ['PYPELININ_BROADCAST'],
           store_class=DirectoryStore, workers='app_workers',
           logger=logging.getLogger('TestBroker'),
           number_of_workers=int(os.environ.get('WORKERS', '2'))).start()


if __name__ == '__main__':
    main()
