"""``Broker``: runs your workers for the cluster, with your store.

The broker itself is the Rust broker library, running inside this Python process
(its event loop and slot threads release the GIL). Your store lives here too: it is
built from the router's ``store`` configuration and called, under the GIL, for each
job's input (``retrieve``), output (``save``) and for monitoring. Your workers run in
worker processes (``python -m pypelinin._worker_host``), one per busy slot, so that
``number_of_workers`` jobs run truly in parallel.
"""

import importlib
import json
import logging
import os
import signal
import sys
import threading
import time

from . import _native
from .errors import PypelininError

# The router's store configuration when it was given none.
_ROUTER_DEFAULT_STORE = {'kind': 'cluster'}


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM so that the broker drains and returns."""


def load_workers(module_name):
    """The worker classes of ``module_name`` by name: the names in its ``__all__``
    (pypelinin's convention), or else every ``Worker`` subclass it defines."""
    module = importlib.import_module(module_name)
    names = getattr(module, '__all__', None)
    if names is None:
        from .pipeline import Worker
        names = [name for name, value in vars(module).items()
                 if isinstance(value, type) and issubclass(value, Worker)
                 and value is not Worker]
    workers = {}
    for name in names:
        try:
            workers[name] = getattr(module, name)
        except AttributeError:
            raise PypelininError('worker {!r} is in {}.__all__ but not defined'
                                 .format(name, module_name)) from None
    if not workers:
        raise PypelininError('module {!r} defines no worker'.format(module_name))
    return module, workers


def _import_root(module):
    """The directory to put on ``sys.path`` so that ``module`` imports the same way."""
    path = getattr(module, '__file__', None)
    if not path:
        return None
    root = os.path.dirname(os.path.abspath(path))
    depth = module.__name__.count('.')
    if os.path.basename(path).startswith('__init__.'):
        depth += 1
    for _ in range(depth):
        root = os.path.dirname(root)
    return root


class _StoreAdapter(object):
    """What the native broker calls: JSON in and out, pypelinin's ``info`` keys for
    the user's store, and a log line for each step."""

    def __init__(self, store, requires, logger):
        self.store = store
        self.requires = requires
        self.logger = logger
        # The broker's slot threads call in at once; pypelinin called its store from
        # one thread, so stores written for it (read, modify, write a file) may rely on
        # one call at a time.
        self.lock = threading.Lock()

    def _info(self, info_json):
        job = json.loads(info_json)
        info = {'data': job['data'], 'worker': job['worker'],
                'worker_requires': list(self.requires.get(job['worker'], [])),
                'parents': job['parents'], 'pipeline_id': job['pipeline_id'],
                'job': job['job'], 'attempt': job['attempt']}
        return info

    def retrieve_json(self, info_json):
        info = self._info(info_json)
        self.logger.info('Started job: pipeline=%s, job=%s, worker=%s, attempt=%s',
                         info['pipeline_id'], info['job'], info['worker'],
                         info['attempt'])
        try:
            with self.lock:
                worker_input = self.store.retrieve(info)
        except Exception:
            self.logger.exception('Could not retrieve data from store for job %s of '
                                  'pipeline %s', info['job'], info['pipeline_id'])
            raise
        if not isinstance(worker_input, dict):
            raise TypeError('{}.retrieve must return a dict, not {}'.format(
                type(self.store).__name__, type(worker_input).__name__))
        return json.dumps(worker_input)

    def save_json(self, info_json, result_json):
        info = self._info(info_json)
        info['worker_result'] = json.loads(result_json)
        try:
            with self.lock:
                self.store.save(info)
        except Exception:
            self.logger.exception('Could not save data into store for job %s of '
                                  'pipeline %s', info['job'], info['pipeline_id'])
            raise
        self.logger.info('Job finished: pipeline=%s, job=%s, worker=%s',
                         info['pipeline_id'], info['job'], info['worker'])

    def save_monitoring_json(self, report_json):
        save = getattr(self.store, 'save_monitoring', None)
        if save is None:
            return
        report = json.loads(report_json)
        slots = report.get('slots', [])
        data = {
            'timestamp': report['at_ms'] / 1000.0,
            'host': {
                'name': report['host'],
                'cpu': {'percent': report['cpu_percent']},
                'memory': {'used': report['memory_used_bytes'],
                           'total': report['memory_total_bytes']},
                'load': report['load'],
            },
            'processes': [{'type': 'broker', 'name': report['broker'],
                           'pid': os.getpid(), 'number of workers': len(slots),
                           'active workers': sum(1 for s in slots if s)}] + [
                {'type': 'worker', 'worker': s['worker'], 'job': s['name'],
                 'pipeline_id': s['job']['pipeline'], 'started_at': s['started_ms'] / 1000.0}
                for s in slots if s],
            'jobs_done': report['jobs_done'],
        }
        try:
            with self.lock:
                save(data)
        except Exception:
            self.logger.exception('Could not save monitoring information into store')
            raise
        self.logger.debug('Saved monitoring information')


class Broker(object):
    """Runs the workers of module ``workers`` for the cluster at ``api``.

    ``store_class`` is instantiated with the router's ``store`` configuration as
    keyword arguments (``store_class(**config['store'])``) once the router welcomes
    the broker; if the router was started without a configuration (its store is the
    default ``{"kind": "cluster"}``), ``store_class()`` is called with none.
    ``number_of_workers`` jobs run at once, each in its own worker process.
    ``broadcast`` is accepted for pypelinin compatibility: jobs come by the API link.
    """

    def __init__(self, api, broadcast, store_class, workers, logger=None,
                 logger_name='Broker', poll_time=50, number_of_workers=None,
                 drain_timeout=30.0, curve_secret=None, router_key=None):
        self.api = api
        # CURVE keys, as for PipelineManager (default: the environment's).
        self.curve_secret = curve_secret or os.environ.get('PYPELININ_CURVE_SECRET') or None
        self.router_key = router_key or os.environ.get('PYPELININ_ROUTER_KEY') or None
        self.broadcast = broadcast
        self.store_class = store_class
        self.logger = logger if logger is not None else logging.getLogger(logger_name)
        self.poll_time = poll_time
        self.number_of_workers = number_of_workers or os.cpu_count() or 1
        self.drain_timeout = drain_timeout
        self.workers = workers
        self.logger.info('Loading workers from module %r', workers)
        module, classes = load_workers(workers)
        self.available_workers = sorted(classes)
        self.worker_requirements = {name: list(getattr(cls, 'requires', []) or [])
                                    for name, cls in classes.items()}
        self._import_root = _import_root(module)
        self._store = None

    def _make_store(self, store_json):
        config = json.loads(store_json)
        if config == _ROUTER_DEFAULT_STORE:
            self.logger.warning('The router has no store configuration: calling %s() '
                                'without arguments', self.store_class.__name__)
            config = {}
        if not isinstance(config, dict):
            raise PypelininError('the router\'s store configuration must be a JSON '
                                 'object, got {!r}'.format(config))
        try:
            store = self.store_class(**config)
        except TypeError as e:
            raise PypelininError('{} does not take the router\'s store configuration {}: '
                                 '{}'.format(self.store_class.__name__, config, e)) from e
        self.logger.info('Store %s built from the router\'s configuration',
                         self.store_class.__name__)
        self._store = store
        return _StoreAdapter(store, self.worker_requirements, self.logger)

    def _job_failed(self, worker, job, pipeline_id, error):
        self.logger.error('Exception raised on worker execution: worker=%s, job=%s, '
                          'pipeline=%s\n%s', worker, job, pipeline_id, error)

    def _host_environment(self):
        paths = [p for p in (self._import_root, os.getcwd()) if p]
        if os.environ.get('PYTHONPATH'):
            paths.append(os.environ['PYTHONPATH'])
        return [('PYTHONPATH', os.pathsep.join(paths)), ('PYTHONUNBUFFERED', '1')]

    def start(self):
        """Runs the broker until Ctrl-C (SIGINT) or SIGTERM; then it stops taking
        jobs, lets running ones finish (up to ``drain_timeout`` seconds) and returns."""
        self.started_at = time.time()
        previous = None
        if threading.current_thread() is threading.main_thread():
            def terminate(signum, frame):
                raise _Terminated()
            previous = signal.signal(signal.SIGTERM, terminate)
        self.logger.info('Broker started: %d worker processes, workers %s, router %s',
                         self.number_of_workers, ', '.join(self.available_workers),
                         self.api)
        argv = [sys.executable, '-m', 'pypelinin._worker_host', self.workers]
        try:
            _native.run_broker(self.api, self.number_of_workers, self.available_workers,
                               argv, self._host_environment(), os.getcwd(),
                               self._make_store, self._job_failed,
                               float(self.drain_timeout), self.curve_secret,
                               self.router_key)
        except KeyboardInterrupt:
            self.logger.info('Got SIGINT (KeyboardInterrupt): stopped')
        except _Terminated:
            self.logger.info('Got SIGTERM: stopped')
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
