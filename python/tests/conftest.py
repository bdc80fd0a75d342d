"""A real cluster on loopback for the tests: the workspace's `pypelinin-router` and
`pypelinin-pipeliner` binaries, and brokers run as Python scripts.

Binaries come from PYPELININ_BIN_DIR (default: `<repo>/target/debug`). Every process
a test starts is stopped by its PID: SIGTERM, then SIGKILL if it does not exit.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EXAMPLE = os.path.join(REPO, 'python', 'example')
BIN_DIR = os.environ.get('PYPELININ_BIN_DIR', os.path.join(REPO, 'target', 'debug'))

# Longest any test waits for the cluster to do something.
PATIENCE = 60.0


def binary(name):
    path = os.path.join(BIN_DIR, name)
    if not os.path.exists(path):
        pytest.fail('{} not found: build the workspace (cargo build) or set '
                    'PYPELININ_BIN_DIR'.format(path))
    return path


class Proc(object):
    """A child process, stopped by PID."""

    def __init__(self, name, argv, log, merge=False, **kwargs):
        self.name = name
        self.log = log
        self.log_file = open(log, 'wb')
        if merge:
            kwargs['stdout'] = self.log_file
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                      stderr=self.log_file, **kwargs)
        self.pid = self.popen.pid

    def stop(self):
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait()
        if self.popen.stdout:
            self.popen.stdout.close()
        self.log_file.close()

    def output(self):
        with open(self.log, errors='replace') as fp:
            return fp.read()


class Cluster(object):
    """A router (with `store` as its store configuration, or none: the router's
    default) and a pipeliner; brokers are added with `add_broker`."""

    def __init__(self, tmp, store, router_args=(), pipeliner_args=()):
        self.tmp = str(tmp)
        self.procs = []
        argv = [binary('pypelinin-router'), '--api', 'tcp://127.0.0.1:0',
                '--broadcast', 'tcp://127.0.0.1:0', '--db', os.path.join(self.tmp, 'db')]
        if store is not None:
            config = os.path.join(self.tmp, 'cluster.json')
            with open(config, 'w') as fp:
                json.dump({'store': store, 'monitoring_interval_ms': 300}, fp)
            argv += ['--config', config]
        argv += list(router_args)
        router = Proc('router', argv, os.path.join(self.tmp, 'router.log'),
                      stdout=subprocess.PIPE)
        self.procs.append(router)
        line = router.popen.stdout.readline().decode()
        if not line.startswith('router listening'):
            self.stop()
            pytest.fail('the router did not start: {!r}\n{}'.format(line, router.output()))
        fields = dict(part.split('=', 1) for part in line.split()[2:])
        self.api, self.broadcast = fields['api'], fields['broadcast']
        self.procs.append(Proc('pipeliner', [binary('pypelinin-pipeliner'),
                                             '--api', self.api, '--broadcast', self.broadcast]
                               + list(pipeliner_args),
                               os.path.join(self.tmp, 'pipeliner.log')))

    def env(self, **extra):
        env = dict(os.environ, PYPELININ_API=self.api, PYPELININ_BROADCAST=self.broadcast)
        env.update(extra)
        return env

    def add_broker(self, script, cwd, name='broker', **env):
        """Runs `python script` in `cwd`; its stdout and stderr go to `<name>.log`."""
        log = os.path.join(self.tmp, name + '.log')
        proc = Proc(name, [sys.executable, script], log, merge=True, cwd=cwd,
                    env=self.env(**env))
        self.procs.append(proc)
        return proc

    def stop(self):
        for proc in reversed(self.procs):
            proc.stop()


def wait_for(predicate, what):
    """Polls `predicate` until it is true, failing after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail('gave up waiting for ' + what)


@pytest.fixture
def make_cluster(tmp_path):
    """Builds clusters for a test and stops every process they started."""
    clusters = []

    def make(store, **kwargs):
        cluster = Cluster(tmp_path, store, **kwargs)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()
