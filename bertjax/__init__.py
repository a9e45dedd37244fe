"""bertjax: BERT pre-training and fine-tuning in JAX, from one CPU to a TPU pod.

`bertjax.from_pretrained(path)` and `bertjax.save_pretrained(model, tokenizer, out)`
are the Python entry points; `bertjax <command>` is the command line.
"""

__version__ = '0.1.0'


def from_pretrained(path):
  """(model, tokenizer) from a Hugging Face BERT directory or a bertjax workdir."""
  from bertjax import pretrained
  return pretrained.from_pretrained(path)


def save_pretrained(model, tokenizer, out_dir):
  """Writes a directory that `transformers` loads unchanged."""
  from bertjax import pretrained
  return pretrained.save_pretrained(model, tokenizer, out_dir)
