"""The worker of S9 (`bench`'s Python broker): as cheap as a Python `Worker` gets, so
that S9 measures what `pypelinin.Broker` costs per job, not the work."""

from pypelinin import Worker

__all__ = ['PyStep']


class PyStep(Worker):
    """S1's `Step` for a root job, in Python: `{"i": i, "n": 1}`, so that `bench`
    checks its outputs the way it checks `Step`'s."""

    requires = ['i']

    def process(self, data):
        return {'i': data['i'], 'n': 1}
