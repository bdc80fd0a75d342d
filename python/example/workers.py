# coding: utf-8
"""The example's workers: fetch a document, then get its text and words, and its links.

pypelinin's example workers, ported to Python 3. `Downloader` fetches its URL with
urllib, so it reads `file://` URLs (local files) as well as `http://` ones.
"""

import re
import time
import urllib.request

from pypelinin import Worker


__all__ = ['Downloader', 'GetTextAndWords', 'GetLinks']


class Downloader(Worker):
    requires = ['url']

    def process(self, data):
        url = data['url']
        start_time = time.time()
        opener = urllib.request.build_opener()
        opener.addheaders = [('User-agent', 'Mozilla/5.0')]
        with opener.open(url) as response:
            content = response.read().decode('utf-8', errors='replace')
        total_time = time.time() - start_time
        return {'html': content, 'download_duration': total_time,
                'length': len(content)}


tags = re.compile(r'<[^>]*>')
spaces_after_newline = re.compile(r'\n[ ]*')


class GetTextAndWords(Worker):
    requires = ['html']

    def process(self, data):
        text = tags.sub('', data['html'])
        text = spaces_after_newline.sub('\n', text).strip()
        text = re.sub(r'\n{2,}', '\n', text)
        words = text.split()
        return {'text': text, 'words': words, 'number_of_words': len(words)}


http_links = re.compile(r'http://([^ "]*)')


class GetLinks(Worker):
    requires = ['html']

    def process(self, data):
        unique = sorted(set(http_links.findall(data['html'])))
        links = ['http://' + link for link in unique]
        return {'links': links, 'number_of_links': len(links)}
