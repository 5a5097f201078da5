"""Chat-template prompts as token ids: the one place instructions become model input.

The template travels with each call (never set on the tokenizer): one tokenizer is shared by
callers that need different templates, e.g. an evaluation of vectors trained with 'gemma' next
to a judge that uses the model's own.
"""

from prosv_jax.errors import ProsvError


# Named templates for base models whose files carry none (config key `chat_template`). Gemma's
# turn format is the one its instruction-tuned siblings use; its tokens exist in the base vocab.
TEMPLATES = {
    'gemma': ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
              "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
              "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
}


def template_text(tokenizer, template: str = '') -> str:
  """The Jinja text to render: '' = the tokenizer's own, a TEMPLATES name, or Jinja text."""
  text = TEMPLATES.get(template, template) if template else getattr(tokenizer, 'chat_template',
                                                                    None)
  if not text:
    raise ProsvError('the tokenizer has no chat template; use an instruction-tuned model, or set '
                     f'--config.chat_template to one of {", ".join(TEMPLATES)} or a Jinja '
                     'template')
  return text


def chat_prompt_text(tokenizer, instruction: str, template: str = '') -> str:
  """The templated user turn with the generation prompt (BOS included if the template has one).

  template: '' = the tokenizer's own, a name from TEMPLATES, or Jinja text.
  """
  text = template_text(tokenizer, template)
  try:
    return tokenizer.apply_chat_template([{'role': 'user', 'content': instruction}],
                                         chat_template=text, add_generation_prompt=True,
                                         tokenize=False)
  except Exception as e:  # jinja2's errors: a broken template from config.chat_template
    if type(e).__module__.split('.')[0] != 'jinja2':
      raise
    raise ProsvError(f'the chat template does not render ({type(e).__name__}: '
                     f'{" ".join(str(e).split())}); fix --config.chat_template or use one of '
                     f'{", ".join(TEMPLATES)}') from None


def chat_prompt_ids(tokenizer, instruction: str, template: str = '') -> list[int]:
  # The template already writes BOS where the model wants one; don't let encode add another.
  text = chat_prompt_text(tokenizer, instruction, template)
  return tokenizer.encode(text, add_special_tokens=False)
