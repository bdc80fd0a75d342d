"""Workers for the tests: they record what they do in files, never in timings."""

import os
import time

from pypelinin import Worker

__all__ = ['Echo', 'Boom', 'Die', 'Hold', 'Marker']

# Longest a worker waits for a file the test is to create.
PATIENCE = 60.0


def wait_for_file(path):
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.02)
    return False


class Echo(Worker):
    requires = ['text']

    def process(self, data):
        print('Echo prints to stdout, which must not break the protocol')
        return {'echo': data['text'], 'pid': os.getpid()}


def explode(value):
    raise ValueError('boom: {}'.format(value))


class Boom(Worker):
    requires = ['text']

    def process(self, data):
        return explode(data['text'])


class Die(Worker):
    requires = []

    def process(self, data):
        os._exit(3)


class Hold(Worker):
    """Runs until the file `release` exists."""

    requires = ['directory', 'name']

    def process(self, data):
        started = os.path.join(data['directory'], data['name'] + '.started')
        with open(started, 'w') as fp:
            fp.write(str(os.getpid()))
        released = wait_for_file(os.path.join(data['directory'], data['name'] + '.release'))
        return {'released': released}


class Marker(Worker):
    """Writes `<name>.start` (its PID), waits (bounded) for `<other>.start`, then
    writes `<name>.end`: two Markers overlap if each saw the other's start."""

    requires = ['directory', 'name', 'other']

    def process(self, data):
        directory = data['directory']
        with open(os.path.join(directory, data['name'] + '.start'), 'w') as fp:
            fp.write(str(os.getpid()))
        saw_other = wait_for_file(os.path.join(directory, data['other'] + '.start'))
        with open(os.path.join(directory, data['name'] + '.end'), 'w') as fp:
            fp.write('saw other start: {}'.format(saw_other))
        return {'pid': os.getpid(), 'saw_other': saw_other}
