"""A worker process of a Python broker: ``python -m pypelinin._worker_host MODULE``.

It speaks the broker's persistent-worker protocol (``broker/src/persistent.rs``):
one JSON request a line on stdin, ``{"id", "job": {"worker", ...}, "input"}``, one
JSON response a line on stdout, ``{"id", "output"}`` or ``{"id", "error"}``; stderr is
the job's log. It imports MODULE, instantiates its workers once, and runs each job's
``process(input)``. An exception fails the job: its traceback goes to stderr and is
the job's error. Whatever the workers print goes to stderr too, so that stdout
carries nothing but responses.
"""

import io
import json
import os
import sys
import traceback


def _protocol_stdout():
    """The real stdout, for responses only; fd 1 (and ``print``) then go to stderr."""
    out = os.fdopen(os.dup(1), 'w', encoding='utf-8', buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _load(module_name):
    """Worker instances by name, or the traceback that prevented loading them."""
    from .broker import load_workers
    try:
        _, classes = load_workers(module_name)
    except BaseException:
        return {}, traceback.format_exc()
    workers, errors = {}, {}
    for name, cls in classes.items():
        try:
            workers[name] = cls()
        except Exception:
            errors[name] = traceback.format_exc()
    return workers, errors


def _run(workers, problem, request):
    worker_name = request['job']['worker']
    if isinstance(problem, str):
        raise RuntimeError('could not load the workers module:\n' + problem)
    if worker_name in problem:
        raise RuntimeError('could not instantiate worker {}:\n{}'
                           .format(worker_name, problem[worker_name]))
    worker = workers.get(worker_name)
    if worker is None:
        raise LookupError('no worker named {!r}'.format(worker_name))
    result = worker.process(request['input'])
    if not isinstance(result, dict):
        raise TypeError('{}.process must return a dict, not {}'
                        .format(worker_name, type(result).__name__))
    return json.dumps(result)


def _user_traceback(exc):
    """The traceback of ``exc`` from the first frame outside this module: the
    worker's own code, not the host's loop."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return ''.join(traceback.format_exception(type(exc), exc, tb))


def main(argv):
    """Serves requests until stdin closes."""
    if len(argv) != 2:
        sys.stderr.write('usage: python -m pypelinin._worker_host MODULE\n')
        return 2
    out = _protocol_stdout()
    workers, problem = _load(argv[1])
    for line in io.TextIOWrapper(sys.stdin.buffer, encoding='utf-8'):
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            output = _run(workers, problem, request)
        except Exception as exc:
            error = _user_traceback(exc)
            sys.stderr.write(error)
            sys.stderr.flush()
            response = json.dumps({'id': request['id'], 'error': error})
        else:
            response = '{{"id": {}, "output": {}}}'.format(int(request['id']), output)
        out.write(response + '\n')
        out.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
