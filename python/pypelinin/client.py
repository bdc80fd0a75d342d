"""``PipelineManager``: submit pipelines to a cluster and follow them.

The router's answers are the truth: ``update`` wakes on the router's broadcasts when
a pipeline finishes, but always reads statuses from the router, so a lost broadcast
never loses a finish.
"""

import json
import os
import time

from . import _native
from .errors import PipelineRefused

_FINAL = ('succeeded', 'failed', 'cancelled')

# Longest single sleep of ``update`` on broadcasts before it reads statuses again.
_RECHECK = 1.0


class PipelineManager(object):
    """Starts pipelines on the cluster whose router listens at ``api`` and
    ``broadcast``, and tells when they finish.

    ``timeout`` (seconds) and ``attempts`` bound every request: a router that does
    not answer raises :class:`~pypelinin.errors.RouterUnavailable` after about
    ``timeout * attempts`` seconds. ``poll_time`` (milliseconds) is accepted for
    pypelinin compatibility: it is the default wait of ``finished``.

    With ``curve_secret`` (a key file made by ``pypelinin keygen``) and ``router_key``
    (the router's public key, or the path of its ``.pub`` file) every connection is
    CURVE-authenticated and encrypted; they default to the environment's
    ``PYPELININ_CURVE_SECRET`` and ``PYPELININ_ROUTER_KEY``.
    """

    def __init__(self, api, broadcast, poll_time=50, timeout=2.5, attempts=4,
                 curve_secret=None, router_key=None):
        self.api = api
        self.broadcast = broadcast
        self.poll_time = poll_time
        self._client = _native.Client(
            api, broadcast, float(timeout), int(attempts),
            curve_secret or os.environ.get('PYPELININ_CURVE_SECRET') or None,
            router_key or os.environ.get('PYPELININ_ROUTER_KEY') or None)
        self._pipelines = {}
        self._unfinished = {}
        self.started_pipelines = 0
        self.finished_pipelines = 0

    def __repr__(self):
        return '<PipelineManager: {} submitted, {} finished>'.format(
            self.started_pipelines, self.finished_pipelines)

    def start(self, pipeline):
        """Sends ``pipeline`` to the cluster; sets and returns ``pipeline.id``.

        Raises :class:`~pypelinin.errors.PipelineRefused` with the reason if the
        cluster does not take it.
        """
        if pipeline.id is not None:
            raise ValueError('This pipeline was already started')
        try:
            spec = json.dumps(pipeline.to_spec())
        except (TypeError, ValueError) as e:
            raise PipelineRefused('the pipeline data cannot be sent as JSON: {}'
                                  .format(e)) from None
        pipeline_id = self._client.submit(spec)
        pipeline.id = pipeline_id
        pipeline.finished = False
        pipeline.status = 'queued'
        pipeline.errors = {}
        pipeline.started_at = time.time()
        pipeline.finished_at = None
        pipeline.duration = None
        self._pipelines[pipeline_id] = pipeline
        self._unfinished[pipeline_id] = pipeline
        self.started_pipelines += 1
        return pipeline_id

    def _apply(self, status):
        """Copies a router status onto its pipeline; counts it once if it finished."""
        pipeline = self._pipelines.get(status['id'])
        if pipeline is None:
            return None
        pipeline.status = status['state']
        pipeline.started_at = status['submitted_ms'] / 1000.0
        pipeline.errors = {name: job.get('error') for name, job in status['jobs'].items()
                           if job['state'] == 'failed'}
        if status['state'] in _FINAL and not pipeline.finished:
            pipeline.finished = True
            finished_ms = status.get('finished_ms') or status['submitted_ms']
            pipeline.finished_at = finished_ms / 1000.0
            pipeline.duration = (finished_ms - status['submitted_ms']) / 1000.0
            self._unfinished.pop(pipeline.id, None)
            self.finished_pipelines += 1
        return pipeline

    def _refresh(self, pipelines):
        statuses = json.loads(self._client.statuses([p.id for p in pipelines]))
        for status in statuses:
            self._apply(status)
        return statuses

    def update(self, timeout=1.0):
        """Waits up to ``timeout`` seconds for started pipelines to finish.

        Returns as soon as at least one finished (or at once if none is running);
        each finished pipeline gets ``finished = True``, its ``status`` and
        ``duration``, and ``finished_pipelines`` counts it.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        before = self.finished_pipelines
        while self._unfinished:
            self._refresh(list(self._unfinished.values()))
            left = deadline - time.monotonic()
            if self.finished_pipelines > before or left <= 0 or not self._unfinished:
                break
            self._client.next_finished(min(left, _RECHECK))

    def finished(self, pipeline):
        """Whether ``pipeline`` finished (succeeded, failed or was cancelled)."""
        self._managed(pipeline)
        if not pipeline.finished:
            self._refresh([pipeline])
        return pipeline.finished

    def wait(self, pipeline, timeout=None):
        """Waits until ``pipeline`` finishes; returns its final ``status``.

        Raises :class:`~pypelinin.errors.Timeout` after ``timeout`` seconds (wait
        forever with ``None``).
        """
        self._managed(pipeline)
        limit = 10.0 ** 9 if timeout is None else float(timeout)
        for status in json.loads(self._client.wait([pipeline.id], limit)):
            self._apply(status)
        return pipeline.status

    def status(self, pipeline):
        """The router's status of ``pipeline`` now, as a dict (``state``, and each
        job's ``state``, ``attempts``, ``error``, times); updates the pipeline too."""
        self._managed(pipeline)
        return self._refresh([pipeline])[0]

    def cancel(self, pipeline):
        """Cancels ``pipeline``: running jobs are stopped, no new ones start.
        Returns its status (a finished pipeline is left as it is)."""
        self._managed(pipeline)
        status = json.loads(self._client.cancel(pipeline.id))
        self._apply(status)
        return pipeline.status

    def _managed(self, pipeline):
        if pipeline.id is None or pipeline.id not in self._pipelines:
            raise ValueError('This pipeline is not being managed by this PipelineManager')

    @property
    def pipelines(self):
        """Every pipeline this manager started."""
        return list(self._pipelines.values())
