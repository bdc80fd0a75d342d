"""The client's model and its errors: pipelines checked when built, pipelines the
router refuses, a router that is not there."""

import socket

import pytest

from pypelinin import (Job, Pipeline, PipelineCycleError, PipelineManager,
                       PipelineRefused, PypelininError, RouterUnavailable)


def test_jobs_are_nodes_by_worker_name_and_the_spec_follows_the_graph():
    pipeline = Pipeline({Job('A'): (Job('B'), Job('C')), Job('B'): Job('D'),
                         Job('C'): Job('D')}, data={'x': 1})
    assert Job('A') == Job('A') and hash(Job('A')) == hash(Job('A'))
    assert {job.worker_name for job in pipeline.jobs} == {'A', 'B', 'C', 'D'}
    assert pipeline.starters == (Job('A'),)
    spec = pipeline.to_spec()
    assert spec['data'] == {'x': 1}
    assert spec['jobs']['A'] == {'worker': 'A', 'after': []}
    assert sorted(spec['jobs']['D']['after']) == ['B', 'C']
    assert pipeline.id is None and not pipeline.finished


def test_a_job_with_its_own_data_and_edge_lists():
    pipeline = Pipeline([(Job('A', data={'k': 2}), Job('B')), (Job('B'), None)])
    spec = pipeline.to_spec()
    assert spec['jobs']['A']['data'] == {'k': 2}
    assert spec['jobs']['B']['after'] == ['A']
    assert spec['data'] == {}


def test_a_cycle_is_refused_when_the_pipeline_is_built():
    with pytest.raises(PipelineCycleError) as raised:
        Pipeline({Job('A'): Job('B'), Job('B'): Job('C'), Job('C'): Job('A')})
    assert 'cycle' in str(raised.value)
    assert 'A -> B -> C -> A' in str(raised.value) or 'B -> C -> A -> B' in str(raised.value) \
        or 'C -> A -> B -> C' in str(raised.value)
    assert isinstance(raised.value, PipelineRefused)
    assert isinstance(raised.value, ValueError)
    with pytest.raises(PipelineCycleError):
        Pipeline({Job('A'): Job('A')})
    with pytest.raises(TypeError):
        Pipeline({Job('A'): 'B'})


def test_save_dot(tmp_path):
    pipeline = Pipeline({Job('A'): (Job('B'), Job('C'))})
    path = tmp_path / 'pipeline.dot'
    pipeline.save_dot(str(path))
    dot = path.read_text()
    assert dot.startswith('digraph')
    assert '"A" -> "B";' in dot and '"A" -> "C"' in dot
    assert str(pipeline) + '\n' == dot


def test_the_router_refuses_a_bad_pipeline_with_its_reason(make_cluster):
    cluster = make_cluster({'directory': '/nonexistent'})
    manager = PipelineManager(cluster.api, cluster.broadcast)
    # A worker name the router refuses (longer than it allows).
    long_name = Pipeline({Job('W' * 300): None})
    with pytest.raises(PipelineRefused) as raised:
        manager.start(long_name)
    assert 'name must have 1 to 256 bytes' in str(raised.value)
    assert long_name.id is None
    # Data that is not a JSON object.
    with pytest.raises(PipelineRefused) as raised:
        manager.start(Pipeline({Job('A'): None}, data=['not', 'a', 'dict']))
    assert 'invalid' in str(raised.value)
    # Data that is not JSON at all.
    with pytest.raises(PipelineRefused) as raised:
        manager.start(Pipeline({Job('A'): None}, data={'x': object()}))
    assert 'JSON' in str(raised.value)
    assert manager.started_pipelines == 0
    # The router goes on.
    good = Pipeline({Job('A'): None}, data={})
    manager.start(good)
    assert manager.status(good)['state'] in ('queued', 'running')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_a_dead_router_raises_router_unavailable():
    port = free_port()
    manager = PipelineManager('tcp://127.0.0.1:{}'.format(port),
                              'tcp://127.0.0.1:{}'.format(free_port()),
                              timeout=0.2, attempts=2)
    pipeline = Pipeline({Job('A'): None})
    with pytest.raises(RouterUnavailable) as raised:
        manager.start(pipeline)
    assert str(port) in str(raised.value)
    assert isinstance(raised.value, PypelininError)
    assert isinstance(raised.value, ConnectionError)
    assert pipeline.id is None
