"""One error type for every user mistake prosv_jax can name, and one way to quote a cause.

Messages are one line and say what to do, e.g.
``ProsvError: no such model file: /x.gguf; pass a local HF folder, a .gguf file, hf:<repo_id> or smollm2-135m-instruct``.
"""


class ProsvError(ValueError):
  """Bad input from the user (config, path, model file, data): the message names the fix."""


def one_line(cause, limit: int = 200) -> str:
  """An exception (as 'Type: message') or any text, squeezed onto one line of at most `limit`
  characters, for quoting inside a ProsvError message."""
  if isinstance(cause, BaseException):
    cause = f'{type(cause).__name__}: {cause}' if str(cause) else type(cause).__name__
  text = ' '.join(str(cause).split())
  return text if len(text) <= limit else text[:limit - 3] + '...'
