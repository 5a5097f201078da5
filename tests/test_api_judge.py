"""The API judge against a scripted local OpenAI-compatible server: ratings, retries, errors,
the reply cache, resume after a failure and the concurrency bound."""

import hashlib
import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import ml_collections
import pytest

from prosv_jax.errors import ProsvError
from prosv_jax.eval.api_judge import ApiJudge, backoff_delay, parse_retry_after
from prosv_jax.eval.judge import ASPECTS, Item, Ratings, rubric_prompt

KEY = 'test-key'
FAST = dict(backoff_s=0.001, timeout_s=10.0)  # tiny backoffs keep the retry tests fast


def hashed_rating(prompt: str) -> int:
  """The fake judge's deterministic rating of a prompt: 0, 1 or 2."""
  return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 3


def default_reply(prompt: str) -> str:
  return f'The response is what it is.\nRating: [[{hashed_rating(prompt)}]]'


def expected(items):
  return [Ratings(*(float(hashed_rating(rubric_prompt(a, it))) for a in ASPECTS)) for it in items]


def make_items(n):
  return [Item(instruction=f'Question {i}?', concept=f'concept {i % 3}',
               response=f'Answer number {i}, about concept {i % 3}.') for i in range(n)]


class FakeApi:
  """A ThreadingHTTPServer on 127.0.0.1 that mimics POST /v1/chat/completions.

  `script(n, prompt)` (n = index of the request, counting all requests) may return None for a
  normal reply, 'drop' to close the connection without answering, or (status, headers, body).
  `reply(prompt)` is the content of a normal reply. Every request is recorded in `seen`.
  """

  def __init__(self, script=None, reply=default_reply, delay=0.0):
    self.script = script
    self.reply = reply
    self.delay = delay
    self.lock = threading.Lock()
    self.seen = []  # (path, headers dict, body dict) of every request
    self.in_flight = 0
    self.max_in_flight = 0
    api = self

    class Handler(BaseHTTPRequestHandler):

      def log_message(self, *args):  # keep pytest output clean
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        with api.lock:
          n = len(api.seen)
          api.seen.append((self.path, dict(self.headers), body))
          api.in_flight += 1
          api.max_in_flight = max(api.max_in_flight, api.in_flight)
        try:
          if api.delay:
            time.sleep(api.delay)
          self._answer(n, body)
        finally:
          with api.lock:
            api.in_flight -= 1

      def _answer(self, n, body):
        if self.path != '/v1/chat/completions':
          return self._send(404, {}, {'error': {'message': f'no route {self.path}'}})
        if self.headers.get('Authorization') != f'Bearer {KEY}':
          return self._send(401, {}, {'error': {'message': 'Incorrect API key provided.'}})
        prompt = body['messages'][0]['content']
        action = api.script(n, prompt) if api.script else None
        if action == 'drop':
          self.close_connection = True
          return
        if action is not None:
          return self._send(*action)
        self._send(200, {}, {
            'id': f'chatcmpl-{n}', 'object': 'chat.completion', 'model': body['model'],
            'choices': [{'index': 0, 'finish_reason': 'stop',
                         'message': {'role': 'assistant', 'content': api.reply(prompt)}}]})

      def _send(self, status, headers, payload):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        for name, value in headers.items():
          self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.thread = threading.Thread(target=self.server.serve_forever,
                                   kwargs=dict(poll_interval=0.05), daemon=True)
    self.thread.start()
    self.base_url = f'http://127.0.0.1:{self.server.server_address[1]}/v1'

  def prompts(self):
    return [body['messages'][0]['content'] for _, _, body in self.seen]

  def close(self):
    self.server.shutdown()
    self.server.server_close()


@pytest.fixture(autouse=True)
def api_env(monkeypatch):
  monkeypatch.setenv('OPENAI_API_KEY', KEY)
  for var in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy',
              'ALL_PROXY'):
    monkeypatch.delenv(var, raising=False)  # a proxy would swallow the 127.0.0.1 requests


@pytest.fixture
def servers():
  """Makes FakeApi servers and closes them after the test."""
  made = []

  def make(**kwargs):
    made.append(FakeApi(**kwargs))
    return made[-1]

  yield make
  for server in made:
    server.close()


def test_success_ratings_harmonic_request_shape_and_progress(servers):
  items = make_items(2)
  table = {  # (item, aspect) -> rating
      (0, 'concept'): 2, (0, 'instruction'): 1, (0, 'fluency'): 2,
      (1, 'concept'): 0, (1, 'instruction'): 2, (1, 'fluency'): 2,
  }
  replies = {rubric_prompt(a, items[i]): f'Clear enough. Some reasoning here.\nRating: [[{r}]]'
             for (i, a), r in table.items()}
  api = servers(reply=replies.__getitem__)
  judge = ApiJudge(base_url=api.base_url, model='judge-model', max_tokens=200, **FAST)
  assert judge.name == 'api:judge-model'
  calls = []
  ratings = judge.rate(items, progress=calls.append)

  assert ratings == [Ratings(2.0, 1.0, 2.0), Ratings(0.0, 2.0, 2.0)]
  assert ratings[0].harmonic == pytest.approx(1.5)  # 3 / (1/2 + 1/1 + 1/2)
  assert ratings[1].harmonic == 0.0  # any 0 rating zeroes the harmonic mean
  assert sum(calls) == 2 and all(c == 1 for c in calls)
  assert len(api.seen) == 6 and sorted(api.prompts()) == sorted(replies)
  path, headers, body = api.seen[0]
  assert path == '/v1/chat/completions'
  assert headers['Authorization'] == f'Bearer {KEY}'
  assert body['model'] == 'judge-model' and body['temperature'] == 0.0
  assert body['max_tokens'] == 200
  assert len(body['messages']) == 1 and body['messages'][0]['role'] == 'user'
  assert judge.stats.requests == 6 and judge.stats.retries == 0
  assert judge.rate([]) == []


def test_malformed_replies_parse_as_the_rubric_says(servers):
  item = make_items(1)[0]
  replies = {
      rubric_prompt('concept', item): 'I cannot decide, so no rating.',
      rubric_prompt('instruction', item): 'Way off the scale. Rating: [[7]]',
      rubric_prompt('fluency', item): 'First Rating: [[1]] ... on reflection Rating: [[2]]',
  }
  api = servers(reply=replies.__getitem__)
  assert ApiJudge(base_url=api.base_url, **FAST).rate([item]) == [Ratings(0.0, 0.0, 2.0)]


def test_null_content_reads_as_no_rating(servers):
  api = servers(script=lambda n, p: (200, {}, {'choices': [{'message': {'content': None}}]}))
  assert ApiJudge(base_url=api.base_url, **FAST).rate(make_items(1)) == [Ratings(0, 0, 0)]


def test_identical_prompts_are_sent_once(servers):
  items = make_items(1) * 3
  api = servers()
  assert ApiJudge(base_url=api.base_url, **FAST).rate(items) == expected(items)
  assert len(api.seen) == 3


def test_rate_limit_honours_retry_after(servers):
  items = make_items(2)
  api = servers(script=lambda n, p: (429, {'Retry-After': '0'},
                                     {'error': {'message': 'Rate limit reached'}}) if n < 4
                else None)
  # A 30 s backoff base: the test only finishes quickly if Retry-After: 0 wins over it.
  judge = ApiJudge(base_url=api.base_url, backoff_s=30.0, max_retries=6, max_concurrency=4)
  start = time.monotonic()
  assert judge.rate(items) == expected(items)
  assert time.monotonic() - start < 10
  assert len(api.seen) == 6 + 4
  assert judge.stats.retries == 4 and judge.stats.requests == 10


def test_server_error_dropped_connection_and_timeout_are_retried(servers):
  items = make_items(2)

  def script(n, prompt):
    if n == 0:
      return (500, {}, b'<html>Internal Server Error</html>')
    if n == 1:
      return 'drop'
    if n == 2:
      time.sleep(1.0)  # longer than the client's timeout
    return None

  api = servers(script=script)
  judge = ApiJudge(base_url=api.base_url, backoff_s=0.001, timeout_s=0.3, max_retries=6)
  assert judge.rate(items) == expected(items)
  assert judge.stats.retries == 3 and len(api.seen) == 6 + 3


def test_bad_key_fails_at_once_naming_the_variable(servers, monkeypatch):
  monkeypatch.setenv('OPENAI_API_KEY', 'sk-wrong')
  api = servers()
  judge = ApiJudge(base_url=api.base_url, max_concurrency=8, **FAST)
  with pytest.raises(ProsvError, match=r'rejected the key in \$OPENAI_API_KEY \(HTTP 401\)') as e:
    judge.rate(make_items(4))
  assert '\n' not in str(e.value) and 'Incorrect API key' in str(e.value)
  assert len(api.seen) == 1  # no retries, and no fan-out of doomed requests


def test_missing_key_variable_is_named(monkeypatch):
  monkeypatch.delenv('MY_JUDGE_KEY', raising=False)
  with pytest.raises(ProsvError, match=r'\$MY_JUDGE_KEY is not set'):
    ApiJudge(api_key_env='MY_JUDGE_KEY')


def test_other_client_errors_carry_the_server_message_on_one_line(servers):
  api = servers(script=lambda n, p: (404, {}, {'error': {
      'message': 'The model `nope` does not exist\nor you do not have access to it.'}}))
  with pytest.raises(ProsvError, match=r'HTTP 404.*does not exist or you do not') as e:
    ApiJudge(base_url=api.base_url, model='nope', **FAST).rate(make_items(2))
  assert '\n' not in str(e.value)
  assert len(api.seen) == 1


def test_retries_run_out_with_a_one_line_error(servers):
  api = servers(script=lambda n, p: (503, {}, {'error': {'message': 'overloaded'}}))
  with pytest.raises(ProsvError, match=r'still failed after 3 attempts \(HTTP 503: overloaded\)'
                     r'.*max_retries') as e:
    ApiJudge(base_url=api.base_url, max_retries=2, **FAST).rate(make_items(2))
  assert '\n' not in str(e.value)
  assert len(api.seen) == 3


def test_unreachable_server_is_retried_then_named(servers):
  api = servers()
  url = api.base_url
  api.close()  # nothing listens on that port any more
  with pytest.raises(ProsvError, match='still failed after 2 attempts'):
    ApiJudge(base_url=url, max_retries=1, **FAST).rate(make_items(1))


def test_cache_hit_sends_nothing(servers, tmp_path):
  items = make_items(3)
  cache = tmp_path / 'sub' / 'judge.sqlite'
  first = servers()
  ratings = ApiJudge(base_url=first.base_url, cache_path=str(cache), **FAST).rate(items)
  assert len(first.seen) == 9 and ratings == expected(items)

  second = servers()
  calls = []
  judge = ApiJudge(base_url=second.base_url, cache_path=str(cache), **FAST)
  assert judge.rate(items, progress=calls.append) == ratings
  assert second.seen == [] and calls == [3] and judge.stats.cache_hits == 9

  # Another model is another cache key.
  ApiJudge(base_url=second.base_url, model='other', cache_path=str(cache), **FAST).rate(items)
  assert len(second.seen) == 9


def test_resume_after_a_failure_sends_only_the_missing_requests(servers, tmp_path):
  items = make_items(5)  # 15 prompts
  cache = str(tmp_path / 'judge.sqlite')
  good = 6
  broken = servers(script=lambda n, p: None if n < good else (500, {}, {'error': {
      'message': 'down'}}))
  with pytest.raises(ProsvError, match='still failed after 2 attempts'):
    ApiJudge(base_url=broken.base_url, cache_path=cache, max_retries=1, max_concurrency=3,
             **FAST).rate(items)
  with sqlite3.connect(cache) as db:
    assert db.execute('SELECT COUNT(*) FROM replies').fetchone()[0] == good

  healthy = servers()
  calls = []
  ratings = ApiJudge(base_url=healthy.base_url, cache_path=cache, max_concurrency=3,
                     **FAST).rate(items, progress=calls.append)
  assert len(healthy.seen) == 15 - good
  answered_before = set(broken.prompts()[:good])
  assert not answered_before & set(healthy.prompts())
  assert sum(calls) == 5

  clean = servers()
  assert ratings == ApiJudge(base_url=clean.base_url, **FAST).rate(items) == expected(items)


def test_concurrency_is_bounded(servers):
  items = make_items(8)  # 24 requests
  api = servers(delay=0.1)
  judge = ApiJudge(base_url=api.base_url, max_concurrency=3, **FAST)
  assert judge.rate(items) == expected(items)
  assert len(api.seen) == 24
  assert 1 < api.max_in_flight <= 3


def test_from_config_and_settings_checks(servers):
  api = servers()
  cfg = ml_collections.ConfigDict(dict(base_url=api.base_url, model='m1', max_concurrency=2,
                                       backoff_s=0.001, cache_path=None))
  judge = ApiJudge.from_config(cfg)
  assert (judge.name, judge.max_concurrency, judge.max_retries) == ('api:m1', 2, 6)
  assert judge.rate(make_items(1)) == expected(make_items(1))
  assert ApiJudge.from_config({'model': 'm2'}).name == 'api:m2'
  with pytest.raises(ProsvError, match='max_concurrency'):
    ApiJudge(max_concurrency=0)
  with pytest.raises(ProsvError, match='base_url'):
    ApiJudge(base_url='api.openai.com/v1')


def test_no_key_variable_sends_no_authorization(servers, monkeypatch):
  monkeypatch.delenv('OPENAI_API_KEY')
  api = servers()
  with pytest.raises(ProsvError, match=r'wants a key \(HTTP 401\).*api_key_env'):
    ApiJudge(base_url=api.base_url, api_key_env=None, **FAST).rate(make_items(1))
  assert 'Authorization' not in api.seen[0][1]


def test_backoff_and_retry_after_parsing():
  assert 0.5 <= backoff_delay(1.0, 0) < 1.5 and 4.0 <= backoff_delay(1.0, 3) < 12.0
  assert backoff_delay(1.0, 50) < 90.0  # capped
  assert parse_retry_after(None) is None and parse_retry_after('soon') is None
  assert parse_retry_after('0') == 0.0 and parse_retry_after(' 2.5 ') == 2.5
  assert parse_retry_after('-3') == 0.0 and parse_retry_after('1e9') == 600.0
  assert parse_retry_after('Wed, 21 Oct 2015 07:28:00 GMT') == 0.0  # a date in the past
