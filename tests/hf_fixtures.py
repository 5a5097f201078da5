"""Tiny random Hugging Face models and tokenizers saved to disk, for reader and parity tests.

A plain module (not a conftest): `from hf_fixtures import save_tiny_hf_model`.
"""

import os

import torch
import transformers

# Small enough to build and save in well under a second; big enough to have
# GQA (4 query heads over 2 kv heads) and more than one layer.
_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=512,
)
# Gemma: query_pre_attn_scalar != head_dim so a converter mixing them up fails
# parity; a small sliding window so sequences past 8 tokens exercise it.
_GEMMA = dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=8)

FAMILIES = ('llama', 'qwen2', 'gemma2', 'gemma3', 'gemma3_mm')


def tiny_config(family: str, **overrides) -> transformers.PretrainedConfig:
  """The tiny config of `family`; `overrides` go straight into the config class.

  For 'gemma3_mm' (Gemma3ForConditionalGeneration) overrides go to the text
  config; the vision tower is a fixed 1-layer SigLIP.
  """
  if family == 'llama':
    return transformers.LlamaConfig(
        **{**_COMMON, 'tie_word_embeddings': False, **overrides})
  if family == 'qwen2':
    return transformers.Qwen2Config(
        **{**_COMMON, 'tie_word_embeddings': False, **overrides})
  if family == 'gemma2':
    return transformers.Gemma2Config(**{**_COMMON, **_GEMMA, **overrides})
  if family in ('gemma3', 'gemma3_mm'):
    kw = {**_COMMON, **_GEMMA, **overrides}
    if 'layer_types' not in kw:
      # Alternate local and global layers (real Gemma3 is 5:1) so 2 layers
      # already cover both rope thetas and both masks.
      kw['layer_types'] = [
          'full_attention' if (i + 1) % 2 == 0 else 'sliding_attention'
          for i in range(kw['num_hidden_layers'])]
    if family == 'gemma3':
      return transformers.Gemma3TextConfig(**kw)
    kw['vocab_size'] = max(kw['vocab_size'], 131)  # room for image tokens
    v = kw['vocab_size']
    return transformers.Gemma3Config(
        text_config=kw,
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, image_size=28, patch_size=14),
        mm_tokens_per_image=4, boi_token_index=v - 3, eoi_token_index=v - 2,
        image_token_index=v - 1)
  raise ValueError(f'unknown family {family!r}; pick one of {FAMILIES}')


def save_tiny_hf_model(
    tmp_path,
    family: str,
    *,
    dtype: torch.dtype = torch.float32,
    max_shard_size: int | str | None = None,
    seed: int = 0,
    perturb: bool = True,
    name: str | None = None,
    **overrides,
) -> tuple[str, torch.nn.Module]:
  """Builds a tiny random transformers model and saves it as safetensors.

  Args:
    tmp_path: parent folder (e.g. pytest's tmp_path).
    family: one of FAMILIES.
    dtype: torch.float32 or torch.bfloat16 (weights are saved in it).
    max_shard_size: e.g. '20KB' to force a sharded model.safetensors.index.json.
    seed: torch.manual_seed used for the weights.
    perturb: add noise to 1-D params (norm weights, biases) which HF initializes
      to constants, so a converter that drops or misplaces them fails parity.
    name: subfolder name; defaults to the family.
    **overrides: config fields (sliding_window, attn_logit_softcapping,
      final_logit_softcapping, tie_word_embeddings, attention_bias, ...).

  Returns:
    (folder path, the torch model in eval mode with eager attention).
  """
  config = tiny_config(family, **overrides)
  # Eager attention honours softcapping and sliding windows exactly.
  config._attn_implementation = 'eager'  # pylint: disable=protected-access
  if getattr(config, 'text_config', None) is not None:
    config.text_config._attn_implementation = 'eager'  # pylint: disable=protected-access
    config.vision_config._attn_implementation = 'eager'  # pylint: disable=protected-access
  cls = {
      'llama': transformers.LlamaForCausalLM,
      'qwen2': transformers.Qwen2ForCausalLM,
      'gemma2': transformers.Gemma2ForCausalLM,
      'gemma3': transformers.Gemma3ForCausalLM,
      'gemma3_mm': transformers.Gemma3ForConditionalGeneration,
  }[family]
  torch.manual_seed(seed)
  model = cls(config)
  if perturb:
    with torch.no_grad():
      for p in model.parameters():
        if p.ndim == 1:
          p.add_(0.1 * torch.randn_like(p))
  model = model.to(dtype).eval()
  path = os.path.join(str(tmp_path), name or family)
  kwargs = {} if max_shard_size is None else {'max_shard_size': max_shard_size}
  model.save_pretrained(path, **kwargs)  # transformers 5 always writes safetensors
  return path, model


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}"
    " <|end|> {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")

_WORDS = tuple(('hello world the a cat dog sat on mat is happy sad big small red blue '
          'one two three and . , ! ?').split())
SPECIAL_TOKENS = ('<unk>', '<pad>', '<s>', '</s>', '<|user|>', '<|assistant|>',
                  '<|system|>', '<|end|>')


def save_tiny_tokenizer(
    path, chat_template: str = CHAT_TEMPLATE, words: tuple = _WORDS
) -> transformers.PreTrainedTokenizerFast:
  """Saves a word-level tokenizer over SPECIAL_TOKENS + `words` into `path`.

  Keep the vocabulary under the tiny models' 128 ids (the default has < 40).
  """
  import tokenizers  # pylint: disable=import-outside-toplevel
  vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + tuple(words))}
  tok = tokenizers.Tokenizer(
      tokenizers.models.WordLevel(vocab, unk_token='<unk>'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, unk_token='<unk>', pad_token='<pad>',
      bos_token='<s>', eos_token='</s>',
      additional_special_tokens=list(SPECIAL_TOKENS[4:]))
  fast.chat_template = chat_template
  fast.save_pretrained(str(path))
  return fast
