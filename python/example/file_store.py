# coding: utf-8
"""A store that keeps each pipeline's document as a JSON file.

pypelinin's example store, ported to Python 3. The router's store configuration
gives it its keyword arguments: `directory` (where relative document file names
live; default: the current directory) and `monitoring filename` (where monitoring
reports are appended, one JSON line each).

Like the original, it is a sample: it only works with brokers that share the files.
"""

import json
import os


class SimpleFileStore(object):
    def __init__(self, **configuration):
        self.directory = configuration.get('directory', '.')
        self.monitoring_fp = open(configuration['monitoring filename'], 'a')

    def _path(self, info):
        return os.path.join(self.directory, info['data']['filename'])

    def _read(self, info):
        with open(self._path(info)) as fp:
            return json.loads(fp.read().strip())

    def retrieve(self, info):
        '''The input of `Worker.process`: the document's keys the worker requires.

        `info` has keys 'worker', 'worker_requires' and 'data' (the pipeline's).
        '''
        document = self._read(info)
        return {key: document[key] for key in info['worker_requires']}

    def save(self, info):
        '''Merges what `Worker.process` returned (`info['worker_result']`) into
        the document.'''
        document = self._read(info)
        result = info['worker_result']
        document['_result-from-{}'.format(info['worker'])] = result
        document.update(result)
        # Written aside then renamed: a reader never sees half a document.
        temporary = self._path(info) + '.tmp-{}'.format(os.getpid())
        with open(temporary, 'w') as fp:
            fp.write(json.dumps(document))
        os.replace(temporary, self._path(info))

    def save_monitoring(self, data):
        self.monitoring_fp.write(json.dumps(data) + '\n')
        self.monitoring_fp.flush()
