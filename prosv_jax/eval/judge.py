"""The judge interface, the AxBench-style rubric prompts and rating parsing.

A judge maps (instruction, concept description, response) to three ratings in [0, 2]:
concept (is the concept clearly there), instruction (is the response about the instruction)
and fluency. Every judge (API, local LM, offline) implements `Judge.rate`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Protocol, Sequence

ASPECTS = ('concept', 'instruction', 'fluency')
MAX_RATING = 2.0


@dataclasses.dataclass(frozen=True)
class Item:
  """One generation to judge."""
  instruction: str
  concept: str
  response: str


@dataclasses.dataclass(frozen=True)
class Ratings:
  """Three ratings in [0, 2]."""
  concept: float
  instruction: float
  fluency: float

  @property
  def harmonic(self) -> float:
    return harmonic_mean(self.concept, self.instruction, self.fluency)


Progress = Callable[[int], None]  # called with the number of items just finished


class Judge(Protocol):
  """Rates items; `name` identifies the judge (and its settings) in results and caches."""
  name: str

  def rate(self, items: Sequence[Item], progress: Progress | None = None) -> list[Ratings]:
    ...


def harmonic_mean(*ratings: float) -> float:
  """AxBench's per-generation score: the harmonic mean of the ratings, 0 if any is 0."""
  if any(r <= 0 for r in ratings):
    return 0.0
  return len(ratings) / sum(1.0 / r for r in ratings)


# The rubric follows the AxBench criteria (METHOD.md section 5); the wording is ours.
_HEADER = ('You are an impartial judge. Read the response below and rate it on one aspect '
           'only, on a scale from 0 to 2. First explain your reasoning in one or two '
           'sentences, then give the rating in exactly this format: "Rating: [[x]]" where x '
           'is 0, 1 or 2.\n\n')

RUBRICS = {
    'concept': (
        'Aspect: does the response bring in the concept "{concept}"? Judge only whether the '
        'concept is present, not grammar, logic or relevance to any question. '
        '0 = the concept does not appear at all; 1 = the concept appears only weakly, '
        'briefly or awkwardly; 2 = the concept is clearly and substantially present.\n\n'
        'Response:\n{response}\n'),
    'instruction': (
        'Aspect: is the response related to the instruction below? Judge only relevance '
        'to the instruction, not fluency or whether other topics also appear. '
        '0 = unrelated to the instruction; 1 = partly related, or it drifts away from the '
        'instruction; 2 = clearly addresses the instruction.\n\n'
        'Instruction:\n{instruction}\n\nResponse:\n{response}\n'),
    'fluency': (
        'Aspect: is the response fluent? Judge only grammar, coherence and readability, not '
        'relevance or content. 0 = not fluent: broken, repetitive or incoherent text; '
        '1 = somewhat fluent, with noticeable errors or repetition; 2 = fluent, natural and '
        'coherent. A response that stops mid-sentence because of a length limit is not '
        'penalised for that.\n\nResponse:\n{response}\n'),
}


def rubric_prompt(aspect: str, item: Item) -> str:
  """The judge prompt for one aspect of one item."""
  if aspect not in RUBRICS:
    raise ValueError(f'unknown aspect {aspect!r}; use one of {ASPECTS}')
  return _HEADER + RUBRICS[aspect].format(concept=item.concept, instruction=item.instruction,
                                          response=item.response)


_RATING = re.compile(r'Rating:\s*\[\[\s*([^\[\]]*?)\s*\]\]', re.IGNORECASE)


def parse_rating(reply: str | None) -> float:
  """The last `Rating: [[x]]` of a judge reply; anything missing or outside [0, 2] is 0."""
  if not reply:
    return 0.0
  found = _RATING.findall(reply)
  if not found:
    return 0.0
  try:
    value = float(found[-1])
  except ValueError:
    return 0.0
  if not 0.0 <= value <= MAX_RATING or value != value:
    return 0.0
  return value
