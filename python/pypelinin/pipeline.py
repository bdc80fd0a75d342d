"""Jobs, pipelines and workers: pypelinin's model, in pure Python.

A :class:`Pipeline` is a directed acyclic graph of :class:`Job` objects, written as a
dict whose keys run before their values (``{Job('A'): (Job('B'), Job('C'))}``). It is
checked when built (a cycle raises :class:`~pypelinin.errors.PipelineCycleError`) and
turned into the cluster's pipeline spec when a ``PipelineManager`` starts it.
"""

from .errors import PipelineCycleError


class Worker(object):
    """Base class of workers.

    A worker names what it needs in ``requires`` (the store reads it as
    ``info['worker_requires']``) and turns the store's input into a result in
    ``process(data)``, which returns a dict. Workers run in worker processes of the
    broker, one job at a time each; an exception fails the job with its traceback.
    """

    requires = []

    def process(self, data):
        """Turns ``data`` (what the store retrieved) into a dict of results."""
        raise NotImplementedError('{} must define process(data)'
                                  .format(type(self).__name__))


class Job(object):
    """One step of a pipeline: the worker to run, and optional data of its own.

    As in pypelinin, jobs are the same node of a graph when they name the same worker,
    so ``{Job('A'): Job('B'), Job('B'): Job('C')}`` is the chain A → B → C. A job's
    ``data`` (a dict) is laid over the pipeline's data for that job only.
    """

    def __init__(self, worker_name, data=None):
        self.worker_name = worker_name
        self.data = data

    def __repr__(self):
        extra = ', data=...' if self.data is not None else ''
        return '<Job worker={}{}>'.format(self.worker_name, extra)

    def __eq__(self, other):
        return type(self) is type(other) and self.worker_name == other.worker_name

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(self.worker_name)


def _as_jobs(value, what):
    """A key or value of the graph as a list of jobs (None and () mean none)."""
    if value is None:
        return []
    if isinstance(value, Job):
        return [value]
    if isinstance(value, (tuple, list, set, frozenset)):
        jobs = list(value)
        for job in jobs:
            if not isinstance(job, Job):
                raise TypeError('only Job objects are accepted in a pipeline, '
                                'got {!r} as a {}'.format(job, what))
        return jobs
    raise TypeError('only Job objects are accepted in a pipeline, got {!r} as a {}'
                    .format(value, what))


class Pipeline(object):
    """A graph of jobs plus the ``data`` every job's store sees.

    ``pipeline`` is a dict ``{Job or tuple of Jobs: Job or tuple of Jobs or None}``, each
    key running before its values, or a list of ``(job, job_or_None)`` edges.
    Attributes set by a ``PipelineManager``: ``id``, ``finished``, ``status``
    (``'queued'``, ``'running'``, ``'succeeded'``, ``'failed'``, ``'cancelled'``),
    ``errors`` (failed job → error), ``started_at``, ``finished_at`` and
    ``duration`` (seconds, the router's clock).
    """

    def __init__(self, pipeline, data=None):
        self.data = data
        self.id = None
        self.finished = False
        self.status = None
        self.errors = {}
        self.started_at = None
        self.finished_at = None
        self.duration = None
        self._original_graph = pipeline
        if isinstance(pipeline, dict):
            items = pipeline.items()
        else:
            items = pipeline
        edges = []
        for key, value in items:
            for parent in _as_jobs(key, 'key'):
                children = _as_jobs(value, 'value')
                if not children:
                    edges.append((parent, None))
                for child in children:
                    edges.append((parent, child))
        self._graph = edges
        jobs = []
        seen = set()
        for parent, child in edges:
            for job in (parent, child):
                if job is not None and job not in seen:
                    seen.add(job)
                    jobs.append(job)
        self.jobs = tuple(jobs)
        self._parents = {job: [] for job in self.jobs}
        for parent, child in edges:
            if child is not None and parent not in self._parents[child]:
                self._parents[child].append(parent)
        self.starters = tuple(job for job in self.jobs if not self._parents[job])
        if not self.jobs:
            raise PipelineCycleError('the pipeline has no jobs')
        cycle = self.has_cycle()
        if cycle:
            raise PipelineCycleError('the pipeline graph has a cycle: {}'.format(
                ' -> '.join(job.worker_name for job in cycle)))
        if not self.starters:
            raise PipelineCycleError('the pipeline has no job to start with')

    def __repr__(self):
        extra = ', data=...' if self.data is not None else ''
        return '<Pipeline: {}{}>'.format(
            ', '.join(job.worker_name for job in self.jobs), extra)

    def __eq__(self, other):
        return (isinstance(other, Pipeline) and set(self._graph) == set(other._graph)
                and self.data == other.data)

    def __ne__(self, other):
        return not self == other

    __hash__ = object.__hash__

    def has_cycle(self):
        """A cycle of the graph as a list of jobs (first one repeated last), or ``[]``."""
        state = {}
        for start in self.jobs:
            if start in state:
                continue
            # Iterative depth-first search over parents: grey = on the path.
            stack = [(start, iter(self._parents[start]))]
            path = [start]
            state[start] = 'grey'
            while stack:
                node, parents = stack[-1]
                for parent in parents:
                    if state.get(parent) == 'grey':
                        loop = path[path.index(parent):] + [parent]
                        return list(reversed(loop))
                    if parent not in state:
                        state[parent] = 'grey'
                        path.append(parent)
                        stack.append((parent, iter(self._parents[parent])))
                        break
                else:
                    state[node] = 'black'
                    path.pop()
                    stack.pop()
        return []

    def to_dot(self):
        """The graph in graphviz's DOT language."""
        nodes = ';\n    '.join('"{}"'.format(job.worker_name) for job in self.jobs)
        edges = ';\n    '.join(
            '"{}" -> "{}"'.format(a.worker_name, b.worker_name if b else '(None)')
            for a, b in self._graph)
        return 'digraph graphname {{\n    {};\n\n    {};\n}}'.format(nodes, edges)

    def __str__(self):
        return self.to_dot()

    def save_dot(self, filename, encoding='utf-8'):
        """Writes the graph as a DOT file, for graphviz (``dot -Tpng``)."""
        with open(filename, 'w', encoding=encoding) as fp:
            fp.write(self.to_dot() + '\n')

    def to_spec(self):
        """The cluster's pipeline spec (the JSON the router takes), as a dict.

        Job names are worker names (a worker is one node of the graph).
        """
        jobs = {}
        for job in self.jobs:
            spec = {'worker': job.worker_name,
                    'after': [p.worker_name for p in self._parents[job]]}
            if job.data is not None and job.data is not self.data:
                spec['data'] = job.data
            jobs[job.worker_name] = spec
        return {'data': {} if self.data is None else self.data, 'jobs': jobs}
