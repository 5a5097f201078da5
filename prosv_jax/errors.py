"""One error type for every user mistake prosv_jax can name.

Messages are one line and say what to do, e.g.
``ProsvError: no such model file: /x.gguf; pass a local HF folder, a .gguf file, hf:<repo_id> or smollm2-135m-instruct``.
"""


class ProsvError(ValueError):
  """Bad input from the user (config, path, model file, data): the message names the fix."""
