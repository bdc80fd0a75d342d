"""pypelinin's example, ported to Python 3, end to end on a real cluster.

`python/example/my_broker.py` runs the example's workers with its file store;
`send_pipelines.py` sends one pipeline per document (local HTML files, as `file://`
URLs) and waits for them with `PipelineManager.update`, as the original does. The
documents the store wrote are checked against what the workers must have computed.
"""

import json
import os
import subprocess
import sys

from conftest import EXAMPLE, PATIENCE, wait_for

PAGES = [
    '<html><head><title>One</title></head>\n<body>\n  <a href="http://a.example/">first link</a>\n'
    '  <a href="http://b.example/x">second</a>\n  <a href="http://a.example/">again</a>\n</body></html>',
    '<html><body>\n  <p>No links here, just five words</p>\n</body></html>',
    '<html><body><a href="http://c.example/">only</a></body></html>',
]
# What GetTextAndWords and GetLinks must find in each page.
EXPECTED = [
    {'number_of_words': 5, 'links': ['http://a.example/', 'http://b.example/x']},
    {'number_of_words': 6, 'links': []},
    {'number_of_words': 1, 'links': ['http://c.example/']},
]


def test_example_runs_end_to_end(make_cluster, tmp_path):
    documents = tmp_path / 'documents'
    documents.mkdir()
    monitoring = tmp_path / 'monitoring.log'
    cluster = make_cluster({'directory': str(documents),
                            'monitoring filename': str(monitoring)})
    broker = cluster.add_broker('my_broker.py', cwd=EXAMPLE)
    urls = []
    for index, page in enumerate(PAGES):
        path = tmp_path / 'page-{}.html'.format(index)
        path.write_text(page)
        urls.append('file://' + str(path))

    sent = subprocess.run(
        [sys.executable, 'send_pipelines.py'] + urls, cwd=EXAMPLE,
        env=cluster.env(PYPELININ_EXAMPLE_DIR=str(documents)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=PATIENCE * 3)
    output = sent.stdout.decode()
    assert sent.returncode == 0, output + broker.output()
    assert 'All pipelines finished' in output
    assert 'Average pipeline duration' in output

    for index, expected in enumerate(EXPECTED):
        with open(str(documents / '{}.dat'.format(index))) as fp:
            document = json.load(fp)
        assert document['url'] == urls[index]
        assert document['html'] == PAGES[index]
        assert document['length'] == len(PAGES[index])
        assert document['number_of_words'] == expected['number_of_words']
        assert document['words'] == document['text'].split()
        assert sorted(document['links']) == expected['links']
        assert document['number_of_links'] == len(expected['links'])
        for worker in ('Downloader', 'GetTextAndWords', 'GetLinks'):
            assert '_result-from-' + worker in document
        assert 'url={}'.format(urls[index]) in output

    # The store's monitoring went where the router's configuration said.
    def reports():
        if not monitoring.exists():
            return []
        return [json.loads(line) for line in monitoring.read_text().splitlines() if line]
    report = wait_for(reports, 'a monitoring report')[-1]
    assert {'timestamp', 'host', 'processes'} <= set(report)
    assert report['processes'][0]['type'] == 'broker'
    # The broker logged through the example's logger.
    log = broker.output()
    assert ' - Broker - INFO - ' in log
    assert 'Job finished' in log
