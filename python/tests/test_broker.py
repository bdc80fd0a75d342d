"""The Python broker and client on a real cluster: failures, parallelism, waiting,
cancelling. The broker is `broker_app/run_broker.py` (workers in
`broker_app/app_workers.py`, store in `broker_app/app_store.py`)."""

import json
import os
import signal
import subprocess

import pytest

from conftest import HERE, binary, wait_for
from pypelinin import (Job, Pipeline, PipelineManager, PypelininError, RouterUnavailable,
                       Timeout)

APP = os.path.join(HERE, 'broker_app')


@pytest.fixture
def cluster(make_cluster, tmp_path):
    store = tmp_path / 'store'
    store.mkdir()
    cluster = make_cluster({'directory': str(store), 'flavour': 'test'})
    cluster.store = store
    cluster.broker = cluster.add_broker('run_broker.py', cwd=APP)
    cluster.manager = PipelineManager(cluster.api, cluster.broadcast)
    return cluster


def saved(cluster, pipeline, job):
    with open(str(cluster.store / '{}-{}.json'.format(pipeline.id, job))) as fp:
        return json.load(fp)


def test_a_pipeline_runs_and_the_store_gets_pypelinins_info(cluster):
    manager = cluster.manager
    pipeline = Pipeline({Job('Echo'): None}, data={'text': 'hello'})
    pipeline_id = manager.start(pipeline)
    assert pipeline.id == pipeline_id
    assert manager.wait(pipeline, timeout=60) == 'succeeded'
    assert pipeline.finished and pipeline.status == 'succeeded'
    assert pipeline.duration is not None and pipeline.duration >= 0
    assert pipeline.finished_at >= pipeline.started_at
    record = saved(cluster, pipeline, 'Echo')
    assert record['result']['echo'] == 'hello'
    info = record['info']
    assert info['worker'] == 'Echo'
    assert info['worker_requires'] == ['text']
    assert info['data'] == {'text': 'hello'}
    assert info['worker_result'] == record['result']
    assert manager.started_pipelines == 1 and manager.finished_pipelines == 1
    assert manager.pipelines == [pipeline]


def test_a_worker_that_raises_fails_its_pipeline_with_the_traceback(cluster):
    manager = cluster.manager
    failing = Pipeline({Job('Boom'): Job('Echo')}, data={'text': 'kaput'})
    manager.start(failing)
    assert manager.wait(failing, timeout=60) == 'failed'
    assert failing.finished
    error = failing.errors['Boom']
    assert 'Traceback (most recent call last)' in error
    assert 'in explode' in error and 'app_workers.py' in error
    assert 'ValueError: boom: kaput' in error
    status = manager.status(failing)
    assert status['state'] == 'failed'
    assert status['jobs']['Echo']['state'] == 'skipped'
    # The broker logged it, traceback included.
    log = wait_for(lambda: 'ValueError: boom: kaput' in cluster.broker.output()
                   and cluster.broker.output(), 'the traceback in the broker log')
    assert 'Exception raised on worker execution: worker=Boom' in log
    # And it goes on serving.
    after = Pipeline({Job('Echo'): None}, data={'text': 'still here'})
    manager.start(after)
    assert manager.wait(after, timeout=60) == 'succeeded'
    assert saved(cluster, after, 'Echo')['result']['echo'] == 'still here'


def test_a_worker_process_that_dies_fails_only_its_job(cluster):
    manager = cluster.manager
    dying = Pipeline({Job('Die'): None}, data={})
    manager.start(dying)
    assert manager.wait(dying, timeout=60) == 'failed'
    assert 'exited with status 3' in dying.errors['Die']
    after = Pipeline({Job('Echo'): None}, data={'text': 'reborn'})
    manager.start(after)
    assert manager.wait(after, timeout=60) == 'succeeded'


def test_two_workers_run_at_once_in_two_processes(cluster):
    manager = cluster.manager
    directory = str(cluster.store)
    first = Pipeline({Job('Marker'): None}, data={'name': 'a', 'other': 'b'})
    second = Pipeline({Job('Marker'): None}, data={'name': 'b', 'other': 'a'})
    manager.start(first)
    manager.start(second)
    while manager.finished_pipelines < 2:
        manager.update(0.5)
    assert first.status == 'succeeded' and second.status == 'succeeded'
    # Each one started before the other ended: both saw the other's start file.
    for name in ('a', 'b'):
        with open(os.path.join(directory, name + '.end')) as fp:
            assert fp.read() == 'saw other start: True'
    pids = set()
    for name in ('a', 'b'):
        with open(os.path.join(directory, name + '.start')) as fp:
            pids.add(int(fp.read()))
    assert len(pids) == 2
    assert os.getpid() not in pids and cluster.broker.pid not in pids


def test_wait_raises_timeout_then_the_pipeline_finishes(cluster):
    manager = cluster.manager
    pipeline = Pipeline({Job('Hold'): None}, data={'name': 'held'})
    manager.start(pipeline)
    with pytest.raises(Timeout) as raised:
        manager.wait(pipeline, timeout=0.5)
    assert isinstance(raised.value, TimeoutError)
    assert isinstance(raised.value, PypelininError)
    assert not pipeline.finished
    assert not manager.finished(pipeline)
    (cluster.store / 'held.release').write_text('go')
    assert manager.wait(pipeline, timeout=60) == 'succeeded'
    assert manager.finished(pipeline)


def test_status_and_cancel(cluster):
    manager = cluster.manager
    pipeline = Pipeline({Job('Hold'): Job('Echo')}, data={'name': 'cancelled', 'text': 'x'})
    manager.start(pipeline)
    wait_for(lambda: (cluster.store / 'cancelled.started').exists(), 'Hold to start')
    status = manager.status(pipeline)
    assert status['id'] == pipeline.id
    assert status['state'] == 'running' and pipeline.status == 'running'
    assert status['jobs']['Hold']['state'] == 'running'
    assert status['jobs']['Echo']['state'] == 'queued'
    assert manager.cancel(pipeline) == 'cancelled'
    assert pipeline.finished and pipeline.status == 'cancelled'
    assert manager.status(pipeline)['state'] == 'cancelled'
    # The held worker's process was stopped; the broker serves the next pipeline.
    after = Pipeline({Job('Echo'): None}, data={'text': 'next'})
    manager.start(after)
    assert manager.wait(after, timeout=60) == 'succeeded'
    assert manager.finished_pipelines == 2


def test_sigterm_stops_the_broker_and_its_worker_processes(cluster):
    manager = cluster.manager
    pipeline = Pipeline({Job('Echo'): None}, data={'text': 'last'})
    manager.start(pipeline)
    assert manager.wait(pipeline, timeout=60) == 'succeeded'
    worker_pid = saved(cluster, pipeline, 'Echo')['result']['pid']
    os.kill(worker_pid, 0)  # the worker process is alive, waiting for the next job
    broker = cluster.broker
    os.kill(broker.pid, signal.SIGTERM)
    assert broker.popen.wait(timeout=60) == 0
    assert 'Got SIGTERM: stopped' in broker.output()

    def gone():
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            return True
        return False
    wait_for(gone, 'the worker process to end')


def test_a_store_that_fails_fails_the_job_with_its_traceback(cluster):
    manager = cluster.manager
    pipeline = Pipeline({Job('Echo'): None}, data={'not text': 1})
    manager.start(pipeline)
    assert manager.wait(pipeline, timeout=60) == 'failed'
    error = pipeline.errors['Echo']
    assert 'store could not retrieve the input' in error
    assert 'in retrieve' in error and "KeyError: \"missing ['text']\"" in error
    after = Pipeline({Job('Echo'): None}, data={'text': 'fine'})
    manager.start(after)
    assert manager.wait(after, timeout=60) == 'succeeded'


def test_a_store_class_that_refuses_the_routers_configuration_stops_the_broker(make_cluster):
    # No --config: the router's store is {"kind": "cluster"}, so the broker calls
    # DirectoryStore() with no arguments, which it refuses (it needs a directory).
    cluster = make_cluster(None)
    broker = cluster.add_broker('run_broker.py', cwd=APP)
    assert broker.popen.wait(timeout=60) != 0
    log = broker.output()
    assert 'The router has no store configuration' in log
    assert "DirectoryStore does not take the router's store configuration {}" in log
    assert "missing 1 required positional argument: 'directory'" in log


def keygen(tmp_path, name):
    """A key pair made by `pypelinin keygen`: the secret file's path (PATH.pub beside)."""
    path = str(tmp_path / name)
    subprocess.run([binary('pypelinin'), 'keygen', path], check=True,
                   stdout=subprocess.DEVNULL)
    return path


def test_curve_keys_let_members_in_and_keep_strangers_out(make_cluster, tmp_path):
    router, member, stranger = (keygen(tmp_path, n) for n in ('router', 'member', 'stranger'))
    store = tmp_path / 'store'
    store.mkdir()
    cluster = make_cluster(
        {'directory': str(store), 'flavour': 'test'},
        router_args=['--curve-secret', router, '--authorized-keys', member + '.pub'],
        pipeliner_args=['--curve-secret', member, '--router-key', router + '.pub'])
    cluster.store = store
    # The Python broker takes its keys from the environment, the manager as arguments.
    cluster.add_broker('run_broker.py', cwd=APP, PYPELININ_CURVE_SECRET=member,
                       PYPELININ_ROUTER_KEY=router + '.pub')
    manager = PipelineManager(cluster.api, cluster.broadcast, curve_secret=member,
                              router_key=router + '.pub')
    pipeline = Pipeline({Job('Echo'): None}, data={'text': 'sealed'})
    manager.start(pipeline)
    assert manager.wait(pipeline, timeout=60) == 'succeeded'
    assert saved(cluster, pipeline, 'Echo')['result']['echo'] == 'sealed'
    # A key the router does not know, and no key at all, get no answer.
    for keys in ({'curve_secret': stranger, 'router_key': router + '.pub'}, {}):
        outsider = PipelineManager(cluster.api, cluster.broadcast, timeout=0.5, attempts=1,
                                   **keys)
        with pytest.raises(RouterUnavailable):
            outsider.start(Pipeline({Job('Echo'): None}, data={'text': 'let me in'}))
    # A public key where the secret key file belongs is refused, never used in clear.
    with pytest.raises(PypelininError) as refused:
        PipelineManager(cluster.api, cluster.broadcast, curve_secret=router + '.pub',
                        router_key=router + '.pub')
    assert 'router.pub' in str(refused.value)
