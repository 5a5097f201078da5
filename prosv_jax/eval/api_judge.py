"""The API judge: AxBench rubric ratings from any OpenAI-compatible chat-completions endpoint.

Each item costs three requests (one per aspect of `judge.ASPECTS`), each the rubric prompt as a
single user message; the reply's last `Rating: [[x]]` is the rating (missing or out of range
-> 0). HTTP is the standard library only (urllib + a thread pool for bounded concurrency).

With `cache_path` set, every raw reply is written to a SQLite file the moment it arrives,
keyed by sha256(json([model, prompt])): an interrupted evaluation resumes where it stopped
(a rerun sends only the requests not yet cached) and a full rerun sends nothing.

Example:
  judge = ApiJudge(model='gpt-4o-mini', cache_path='workdirs/judge_cache.sqlite')
  ratings = judge.rate(items, progress=bar.update)  # bar: a tqdm bar of len(items)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import email.utils
import hashlib
import http.client
import json
import numbers
import os
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from typing import Sequence

from prosv_jax.errors import ProsvError, one_line
from prosv_jax.eval.judge import ASPECTS, Item, Progress, Ratings, parse_rating, rubric_prompt

MAX_BACKOFF_S = 60.0  # cap on one exponential-backoff wait (Retry-After may ask for more)
MAX_RETRY_AFTER_S = 600.0  # ... and on a server's Retry-After, so a bad header cannot hang us
_MESSAGE_CHARS = 300  # server messages are cut to this many characters in errors
# Besides 5xx: rate limits, and the timeouts/conflicts OpenAI's own client also retries.
_RETRY_CODES = (408, 409, 429)


@dataclasses.dataclass
class ApiJudgeStats:
  """What the last `rate` calls did (cumulative over the judge's life)."""
  requests: int = 0  # HTTP requests sent, retries included
  retries: int = 0  # repeats after a 408/409/429, 5xx, timeout or dropped connection
  cache_hits: int = 0  # prompts answered from the cache without a request


class ApiJudge:
  """Rates items with an LLM behind an OpenAI-compatible `/chat/completions` endpoint.

  Attributes:
    name: 'api:<model>', the judge's id in results.
    stats: request, retry and cache-hit counts.
  """

  def __init__(self, *, base_url: str = 'https://api.openai.com/v1', model: str = 'gpt-4o-mini',
               api_key_env: str | None = 'OPENAI_API_KEY', temperature: float = 0.0,
               max_tokens: int = 256, max_concurrency: int = 8, max_retries: int = 6,
               backoff_s: float = 1.0, timeout_s: float = 60.0, cache_path: str | None = None):
    """Checks the settings and reads the API key, so a bad setup fails before any generation.

    Args:
      base_url: the API root; requests go to `{base_url}/chat/completions`.
      model: the judge model's name at that endpoint.
      api_key_env: environment variable holding the key, sent as `Authorization: Bearer`.
        None or '' sends no key (local servers such as vLLM or llama.cpp).
      temperature: sampling temperature of the judge (0 = as deterministic as the API allows).
      max_tokens: reply length cap; the rubric asks for a sentence or two and the rating.
      max_concurrency: most requests in flight at once.
      max_retries: repeats of one request after a 408/409/429, 5xx, timeout or dropped connection.
      backoff_s: first retry wait; it doubles per retry, with jitter, up to MAX_BACKOFF_S.
        A Retry-After header from the server takes precedence.
      timeout_s: socket timeout of one request.
      cache_path: SQLite file of raw replies (created if missing); None = no cache.

    Raises:
      ProsvError: a setting is out of range or the key's environment variable is unset.
    """
    if not base_url or not str(base_url).startswith(('http://', 'https://')):
      raise ProsvError(f'api_judge.base_url must start with http:// or https://, got '
                       f'{base_url!r}; e.g. https://api.openai.com/v1')
    if not model:
      raise ProsvError("api_judge.model is empty; name the judge model, e.g. 'gpt-4o-mini'")
    for field, value, low in (('max_tokens', max_tokens, 1),
                              ('max_concurrency', max_concurrency, 1),
                              ('max_retries', max_retries, 0)):
      if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ProsvError(f'api_judge.{field} must be an integer >= {low}, got {value!r}')
    for field, value in (('backoff_s', backoff_s), ('temperature', temperature)):
      if not value >= 0:
        raise ProsvError(f'api_judge.{field} must be >= 0, got {value!r}')
    if not timeout_s > 0:
      raise ProsvError(f'api_judge.timeout_s must be > 0, got {timeout_s!r}')

    self.base_url = str(base_url).rstrip('/')
    self.model = str(model)
    self.api_key_env = api_key_env or None
    self.temperature = float(temperature)
    self.max_tokens = int(max_tokens)
    self.max_concurrency = int(max_concurrency)
    self.max_retries = int(max_retries)
    self.backoff_s = float(backoff_s)
    self.timeout_s = float(timeout_s)
    self.cache_path = os.fspath(cache_path) if cache_path else None
    self.name = f'api:{self.model}'
    self.stats = ApiJudgeStats()
    self._key = None
    if self.api_key_env:
      self._key = os.environ.get(self.api_key_env, '').strip()
      if not self._key:
        raise ProsvError(f'${self.api_key_env} is not set; export your API key in it, or set '
                         f'api_judge.api_key_env to the variable that holds it')
    self._url = self.base_url + '/chat/completions'
    self._stats_lock = threading.Lock()

  @classmethod
  def from_config(cls, cfg) -> 'ApiJudge':
    """Builds the judge from a ConfigDict, dict or any object with the __init__ argument names.

    Missing fields keep their defaults, so a config file need only name what it changes.
    """
    kwargs = {}
    for field in ('base_url', 'model', 'api_key_env', 'temperature', 'max_tokens',
                  'max_concurrency', 'max_retries', 'backoff_s', 'timeout_s', 'cache_path'):
      if isinstance(cfg, dict):
        present, value = field in cfg, cfg.get(field)
      else:
        try:
          value, present = getattr(cfg, field), True
        except (AttributeError, KeyError):  # ConfigDict raises AttributeError
          present = False
      if present:
        kwargs[field] = value
    return cls(**kwargs)

  def rate(self, items: Sequence[Item], progress: Progress | None = None) -> list[Ratings]:
    """Ratings of `items`, in their order.

    Cached replies are used first; the remaining prompts (identical prompts sent once) go to
    the API with at most `max_concurrency` in flight, each reply cached as it arrives.

    Args:
      items: the generations to judge.
      progress: called from the calling thread with the number of items just finished (all
        three aspects rated): once up front for the fully cached items (if any), then with 1
        per item as its last reply arrives. The calls add up to len(items).

    Returns:
      One Ratings per item.

    Raises:
      ProsvError: the key was rejected, the request was refused, or a request still failed
        after max_retries (replies received before that stay cached).
    """
    prompt_keys = [[None] * len(ASPECTS) for _ in items]
    prompts: dict[str, str] = {}  # cache key -> prompt
    for i, item in enumerate(items):
      for a, aspect in enumerate(ASPECTS):
        prompt = rubric_prompt(aspect, item)
        key = cache_key(self.model, prompt)
        prompt_keys[i][a] = key
        prompts[key] = prompt

    cache = _ReplyCache(self.cache_path) if self.cache_path else None
    try:
      replies = cache.lookup(prompts) if cache else {}
      with self._stats_lock:
        self.stats.cache_hits += len(replies)
      # Which items wait on each missing prompt, and how many prompts each item still needs.
      waiting: dict[str, list[int]] = {}
      missing_count = [0] * len(items)
      for i, keys in enumerate(prompt_keys):
        for key in set(keys):
          if key not in replies:
            waiting.setdefault(key, []).append(i)
            missing_count[i] += 1
      done_up_front = sum(1 for n in missing_count if n == 0)
      if progress and done_up_front:
        progress(done_up_front)

      def finished(key: str, reply: str):
        replies[key] = reply
        if progress:
          for i in waiting[key]:
            missing_count[i] -= 1
            if missing_count[i] == 0:
              progress(1)

      todo = list(waiting)
      if todo:
        stop = threading.Event()
        # The first request goes alone, so a bad key, URL or model fails after one request
        # rather than after max_concurrency of them.
        finished(todo[0], self._fetch(prompts[todo[0]], todo[0], cache, stop))
        if todo[1:]:
          self._fetch_all(todo[1:], prompts, cache, stop, finished)
    finally:
      if cache:
        cache.close()

    return [Ratings(*(parse_rating(replies[key]) for key in keys)) for keys in prompt_keys]

  def _fetch_all(self, keys, prompts, cache, stop, finished):
    """Sends `keys`' prompts with bounded concurrency; the first failure stops the rest."""
    pool = concurrent.futures.ThreadPoolExecutor(self.max_concurrency,
                                                 thread_name_prefix='api-judge')
    try:
      futures = {pool.submit(self._fetch, prompts[key], key, cache, stop): key for key in keys}
      for future in concurrent.futures.as_completed(futures):
        finished(futures[future], future.result())
    finally:
      # Also on Ctrl-C: queued requests are dropped, retry waits end, and requests already in
      # flight finish (their replies are cached, so a rerun does not pay for them twice).
      stop.set()
      pool.shutdown(wait=True, cancel_futures=True)

  def _fetch(self, prompt: str, key: str, cache, stop: threading.Event) -> str:
    """One prompt's reply text, with retries, written to the cache before it is returned."""
    body = json.dumps({
        'model': self.model,
        'messages': [{'role': 'user', 'content': prompt}],
        'temperature': self.temperature,
        'max_tokens': self.max_tokens,
    }).encode()
    headers = {'Content-Type': 'application/json', 'User-Agent': 'prosv_jax-api-judge'}
    if self._key:
      headers['Authorization'] = f'Bearer {self._key}'
    last = ''
    for attempt in range(self.max_retries + 1):
      if stop.is_set():
        raise ProsvError('the API judge stopped after another request failed')
      if attempt:
        with self._stats_lock:
          self.stats.retries += 1
      with self._stats_lock:
        self.stats.requests += 1
      retry_after = None
      try:
        request = urllib.request.Request(self._url, data=body, headers=headers, method='POST')
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
          payload = response.read()
      except urllib.error.HTTPError as e:
        message = _server_message(e)
        if e.code in (401, 403) and self.api_key_env:
          raise ProsvError(
              f'the API rejected the key in ${self.api_key_env} (HTTP {e.code}): {message}; '
              f'set a valid key for {self.base_url}') from None
        if e.code in (401, 403):
          raise ProsvError(f'the API at {self.base_url} wants a key (HTTP {e.code}): {message}; '
                           f'set api_judge.api_key_env to the variable holding it') from None
        if e.code not in _RETRY_CODES and e.code < 500:
          raise ProsvError(f'the API at {self._url} refused the request (HTTP {e.code}): '
                           f'{message}; check api_judge.model and api_judge.base_url') from None
        last = f'HTTP {e.code}: {message}'
        retry_after = parse_retry_after(e.headers.get('Retry-After') if e.headers else None)
      except (OSError, http.client.HTTPException) as e:
        # URLError (refused, DNS), socket timeouts and dropped connections: all transient.
        reason = getattr(e, 'reason', None) or e
        last = one_line(f'{type(reason).__name__}: {reason}', _MESSAGE_CHARS)
      except ValueError as e:  # urllib's 'unknown url type' and friends
        raise ProsvError(f'bad api_judge.base_url {self.base_url!r}: '
                         f'{one_line(str(e), _MESSAGE_CHARS)}') from None
      else:
        reply = self._reply_text(payload)
        if cache:
          cache.put(key, self.model, prompt, reply)
        return reply
      if attempt < self.max_retries:
        delay = retry_after if retry_after is not None else backoff_delay(self.backoff_s, attempt)
        stop.wait(delay)
    cached = (f'replies so far are cached in {self.cache_path}, ' if self.cache_path else '')
    raise ProsvError(
        f'the API at {self._url} still failed after {self.max_retries + 1} attempts ({last}); '
        f'{cached}rerun later or raise api_judge.max_retries / api_judge.timeout_s')

  def _reply_text(self, payload: bytes) -> str:
    """choices[0].message.content of a reply; null content (e.g. a refusal) reads as ''."""
    try:
      content = json.loads(payload)['choices'][0]['message']['content']
    except (ValueError, KeyError, IndexError, TypeError):
      snippet = one_line(payload.decode('utf-8', 'replace'), _MESSAGE_CHARS)
      raise ProsvError(f'the API at {self._url} sent no choices[0].message.content '
                       f'({snippet!r}); point api_judge.base_url at an OpenAI-compatible '
                       f'/v1 root') from None
    return content if isinstance(content, str) else ''


def cache_key(model: str, prompt: str) -> str:
  """The cache key of one request: sha256 of the JSON of [model, prompt]."""
  return hashlib.sha256(json.dumps([model, prompt]).encode()).hexdigest()


def backoff_delay(base_s: float, attempt: int) -> float:
  """Seconds before retry `attempt + 1`: base * 2**attempt, jittered to [0.5x, 1.5x), capped.

  The jitter spreads out concurrent workers that were rate-limited together.
  """
  return min(MAX_BACKOFF_S, base_s * 2.0 ** attempt) * (0.5 + random.random())


def parse_retry_after(value: str | None) -> float | None:
  """A Retry-After header (seconds or an HTTP date) in seconds, or None if absent/unreadable."""
  if value is None:
    return None
  value = value.strip()
  try:
    seconds = float(value)
  except ValueError:
    try:
      when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
      return None
    if when is None:
      return None
    seconds = when.timestamp() - time.time()
  if seconds != seconds:  # NaN
    return None
  return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def _server_message(error: urllib.error.HTTPError) -> str:
  """The error message of an HTTP error reply: OpenAI's error.message, else the raw body."""
  try:
    raw = error.read().decode('utf-8', 'replace')
  except Exception:  # the body is only for the message; a broken one must not mask the code
    raw = ''
  try:
    parsed = json.loads(raw)
    message = parsed['error']['message'] if isinstance(parsed['error'], dict) else parsed['error']
  except (ValueError, KeyError, TypeError):
    message = raw
  return one_line(message or error.reason or 'no message', _MESSAGE_CHARS)


class _ReplyCache:
  """Raw replies in SQLite, shared by the worker threads of one `rate` call.

  One connection guarded by a lock (SQLite writes are serialized anyway); WAL mode lets
  another process read or write the same file meanwhile, e.g. two evaluations sharing a cache.
  """

  def __init__(self, path: str):
    folder = os.path.dirname(os.path.abspath(path))
    try:
      os.makedirs(folder, exist_ok=True)
      self._db = sqlite3.connect(path, timeout=30.0, check_same_thread=False,
                                 isolation_level=None)
      self._db.execute('PRAGMA journal_mode=WAL')
      self._db.execute('CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, '
                       'model TEXT NOT NULL, prompt TEXT NOT NULL, reply TEXT NOT NULL)')
    except (OSError, sqlite3.Error) as e:
      raise ProsvError(f'cannot open the judge cache {path}: {one_line(str(e), _MESSAGE_CHARS)}; set '
                       f'api_judge.cache_path to a writable SQLite file or None') from None
    self._lock = threading.Lock()

  def lookup(self, prompts: dict[str, str]) -> dict[str, str]:
    """The cached replies among `prompts`' keys."""
    found = {}
    keys = list(prompts)
    with self._lock:
      for start in range(0, len(keys), 500):  # stays under SQLite's bound-variable limit
        chunk = keys[start:start + 500]
        rows = self._db.execute(
            f'SELECT key, reply FROM replies WHERE key IN ({",".join("?" * len(chunk))})', chunk)
        found.update(rows.fetchall())
    return found

  def put(self, key: str, model: str, prompt: str, reply: str):
    # Autocommit (isolation_level=None): the reply is on disk before the request counts as done.
    with self._lock:
      self._db.execute('INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)',
                       (key, model, prompt, reply))

  def close(self):
    with self._lock:
      self._db.close()
