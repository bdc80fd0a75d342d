"""pypelinin: distribute pipelines of jobs over a cluster, with pypelinin's Python API.

The cluster (router, pipeliner, brokers) is the Rust pypelinin; this package gives
Python programs the API they know:

* :class:`Job`, :class:`Pipeline` — a DAG of jobs plus data;
* :class:`PipelineManager` — start pipelines, ``update``, ``finished``, ``wait``,
  ``status``, ``cancel``;
* :class:`Worker` and :class:`Broker` — run your workers, with your store.

Errors: :class:`PypelininError` and its subclasses :class:`RouterUnavailable`,
:class:`PipelineRefused`, :class:`PipelineCycleError`, :class:`Timeout`.
"""

from .errors import (PipelineCycleError, PipelineRefused, PypelininError,
                     RouterUnavailable, Timeout)
from .pipeline import Job, Pipeline, Worker
from .client import PipelineManager
from .broker import Broker

__version__ = '0.1.0'

__all__ = ['Broker', 'Job', 'Pipeline', 'PipelineCycleError', 'PipelineManager',
           'PipelineRefused', 'PypelininError', 'RouterUnavailable', 'Timeout',
           'Worker', '__version__']
