"""S8 of `bench`: S1's one-job `Step` pipelines, submitted and awaited by a Python
program through the `pypelinin` package, the way a pypelinin user writes it.

`bench` starts this script against its running Rust cluster and reads back one JSON
line: `{"n", "succeeded", "wall_s", "submit_s", "cpu_s"}`. The timed section runs from the first
`start` to the last pipeline seen finished; `cpu_s` is this process's CPU
(`getrusage(RUSAGE_SELF)`, user + system) over that same section, so that the
interpreter's start-up and imports are not charged to the jobs.

Awaiting: every pipeline is started first, then `update()` is called until
`finished_pipelines` reaches n. That is pypelinin's own idiom, and the fast one here:
each `update` reads the statuses of all unfinished pipelines in one request and
returns as soon as some finished (`--await wait` instead calls `wait(pipeline)` for
each in turn, one request per pipeline, to compare).
"""

import argparse
import json
import resource
import sys
import time

from pypelinin import Job, Pipeline, PipelineManager


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--api', required=True)
    parser.add_argument('--broadcast', required=True)
    parser.add_argument('--n', type=int, required=True)
    parser.add_argument('--await', dest='how', choices=['update', 'wait'],
                        default='update')
    args = parser.parse_args()

    manager = PipelineManager(args.api, args.broadcast)
    # Built before the clock starts, as S1 builds its specs: the timed part is what the
    # cluster and the client library do with them.
    pipelines = [Pipeline({Job('Step'): None}, data={'i': i}) for i in range(args.n)]

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for pipeline in pipelines:
        manager.start(pipeline)
    submit = time.perf_counter() - t0
    if args.how == 'update':
        deadline = time.monotonic() + 120
        while manager.finished_pipelines < args.n:
            if time.monotonic() > deadline:
                sys.exit('gave up: {} of {} finished'.format(manager.finished_pipelines,
                                                            args.n))
            manager.update(1.0)
    else:
        for pipeline in pipelines:
            manager.wait(pipeline, timeout=120)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0

    # pypelinin's API gives a pipeline's status, not its jobs' outputs (those are the
    # store's): every pipeline must have succeeded with no job error.
    failed = [(p.id, p.status, p.errors) for p in pipelines
              if p.status != 'succeeded' or p.errors]
    for pipeline_id, status, errors in failed[:5]:
        sys.stderr.write('pipeline {} {}: {}\n'.format(pipeline_id, status, errors))
    print(json.dumps({'n': args.n, 'succeeded': args.n - len(failed),
                      'wall_s': wall, 'submit_s': submit, 'cpu_s': cpu}), flush=True)


if __name__ == '__main__':
    main()
