"""A store for the tests: the input is the job's data (plus its parents' outputs);
each result is written as `<directory>/<pipeline id>-<job>.json`."""

import json
import os


class DirectoryStore(object):
    def __init__(self, directory, **configuration):
        self.directory = directory
        self.configuration = configuration

    def retrieve(self, info):
        data = dict(info['data'])
        if 'directory' in info['worker_requires']:
            data['directory'] = self.directory
        missing = [key for key in info['worker_requires'] if key not in data]
        if missing:
            raise KeyError('missing {}'.format(missing))
        return {key: data[key] for key in info['worker_requires']}

    def save(self, info):
        path = os.path.join(self.directory, '{}-{}.json'.format(info['pipeline_id'], info['job']))
        with open(path, 'w') as fp:
            json.dump({'result': info['worker_result'], 'info': info}, fp)

    def save_monitoring(self, data):
        with open(os.path.join(self.directory, 'monitoring.jsonl'), 'a') as fp:
            fp.write(json.dumps(data) + '\n')
