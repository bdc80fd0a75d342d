# coding: utf-8
"""Sends one pipeline per URL, then waits for them all to finish.

pypelinin's example client, ported to Python 3. Sending everything and then waiting
is fine for a few pipelines; with thousands, call `start` and `update` in the same
loop so as to send only as many as the cluster finishes.

URLs are the command-line arguments (pypelinin's list of sites by default; `file://`
URLs read local files). Each pipeline's document is a file `<index>.dat` in the
directory PYPELININ_EXAMPLE_DIR (default /tmp), the `directory` of the router's
store configuration. The router's addresses default to pypelinin's (localhost:5555
and 5556); PYPELININ_API and PYPELININ_BROADCAST override them.
"""

import json
import os
import sys

from time import time

from pypelinin import Job, Pipeline, PipelineManager


def main():
    pipeline_definition = {Job('Downloader'): (Job('GetTextAndWords'),
                                               Job('GetLinks'))}
    urls = sys.argv[1:] or [
        'http://www.fsf.org', 'https://creativecommons.org',
        'http://emap.fgv.br', 'https://twitter.com/turicas',
        'http://www.pypln.org', 'http://www.zeromq.org',
        'http://www.python.org', 'http://www.mongodb.org',
        'http://github.com', 'http://pt.wikipedia.org']
    directory = os.environ.get('PYPELININ_EXAMPLE_DIR', '/tmp')

    pipeline_manager = PipelineManager(
        api=os.environ.get('PYPELININ_API', 'tcp://127.0.0.1:5555'),
        broadcast=os.environ.get('PYPELININ_BROADCAST', 'tcp://127.0.0.1:5556'))
    print('Sending pipelines...')
    start_time = time()
    for index, url in enumerate(urls):
        filename = '{}.dat'.format(index)
        with open(os.path.join(directory, filename), 'w') as fp:
            fp.write(json.dumps({'url': url}))
        pipeline = Pipeline(pipeline_definition, data={'filename': filename})
        pipeline_manager.start(pipeline)
        print('  Sent pipeline for url={}'.format(url))

    print()
    print('Waiting for pipelines to finish...')
    total_pipelines = pipeline_manager.started_pipelines
    finished_pipelines = 0
    while finished_pipelines < total_pipelines:
        pipeline_manager.update(0.5)
        finished_pipelines = pipeline_manager.finished_pipelines
        percentual = 100 * (float(finished_pipelines) / total_pipelines)
        sys.stdout.write('\rFinished pipelines: {}/{} ({:5.2f}%)'
                         .format(finished_pipelines, total_pipelines, percentual))
        sys.stdout.flush()
    end_time = time()
    print('\rAll pipelines finished in {} seconds'.format(end_time - start_time))

    durations = [pipeline.duration for pipeline in pipeline_manager.pipelines]
    average_duration = sum(durations) / len(durations)
    print('Average pipeline duration (seconds) = {} (min={}, max={})'
          .format(average_duration, min(durations), max(durations)))
    print()

    print('Some data saved by store:')
    for index, url in enumerate(urls):
        with open(os.path.join(directory, '{}.dat'.format(index))) as fp:
            data = json.loads(fp.read())
        print('  url={url}, download_duration={download_duration}, '
              'number_of_words={number_of_words}, '
              'number_of_links={number_of_links}'.format(**data))


if __name__ == '__main__':
    main()
