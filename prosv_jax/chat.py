"""Chat-template prompts as token ids: the one place instructions become model input."""

from prosv_jax.errors import ProsvError


def require_chat_template(tokenizer) -> None:
  if not getattr(tokenizer, 'chat_template', None):
    raise ProsvError('the tokenizer has no chat template; use an instruction-tuned model, or set '
                     'tokenizer.chat_template to a Jinja template before prompting')


def chat_prompt_text(tokenizer, instruction: str) -> str:
  """The templated user turn with the generation prompt (BOS included if the template has one)."""
  require_chat_template(tokenizer)
  return tokenizer.apply_chat_template([{'role': 'user', 'content': instruction}],
                                       add_generation_prompt=True, tokenize=False)


def chat_prompt_ids(tokenizer, instruction: str) -> list[int]:
  # The template already writes BOS where the model wants one; don't let encode add another.
  text = chat_prompt_text(tokenizer, instruction)
  return tokenizer.encode(text, add_special_tokens=False)
