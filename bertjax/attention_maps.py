"""`bertjax attention`: heat maps of what each head of a layer attends to, on one text.

    bertjax attention --workdir runs/quickstart --text "the cat sat on the mat ." --out maps.png

One panel per head, the query tokens down and the key tokens across; each row is a
probability distribution over the keys. Works on a bertjax workdir or a Hugging
Face directory (`bertjax.from_pretrained` loads either).
"""
from __future__ import annotations

import math

import numpy as np

from bertjax.errors import UserError


def layer_attentions(model, tokenizer, text: str, text_pair: str | None = None,
                     layer: int = -1) -> tuple[list[str], np.ndarray]:
  """(tokens, probs_HLL): the pieces of `text` ([CLS] ... [SEP]) and layer `layer`'s
  attention probabilities for them, every head."""
  num_layers = model.config.num_layers
  if not -num_layers <= layer < num_layers:
    raise UserError(f'--layer {layer} is out of range: the model has {num_layers} layers '
                    f'(0 to {num_layers - 1}, or -1 for the last)')
  batch = tokenizer(text, text_pair)
  attentions = model(**batch, output_attentions=True).attentions
  ids = batch['input_ids'][0]
  tokens = [tokenizer.tokenizer.id_to_piece(int(i)) for i in ids]
  return tokens, np.asarray(attentions[layer][0], np.float32)


def draw(tokens: list[str], probs_HLL: np.ndarray, out: str, title: str) -> None:
  """Writes one heat map per head into a PNG at `out`, tokens on both axes."""
  import matplotlib
  matplotlib.use('Agg')  # files only; no display needed
  from matplotlib import pyplot as plt
  heads, length = probs_HLL.shape[0], len(tokens)
  cols = min(heads, 4)
  rows = math.ceil(heads / cols)
  # ~0.13 inch a token keeps 40-token sentences readable at a 6-point font.
  side = max(3.0, 0.13 * length + 1.0)
  fig, axes = plt.subplots(rows, cols, figsize=(cols * side, rows * side), squeeze=False)
  font = 6 if length > 20 else 8
  for h, ax in enumerate(axes.flat):
    if h >= heads:
      ax.axis('off')
      continue
    ax.imshow(probs_HLL[h], cmap='viridis', vmin=0.0, vmax=1.0)
    ax.set_title(f'head {h}', fontsize=font + 2)
    ax.set_xticks(range(length), tokens, rotation=90, fontsize=font)
    ax.set_yticks(range(length), tokens, fontsize=font)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out, dpi=150)
  plt.close(fig)


def command(args, overrides) -> None:
  """The `bertjax attention` subcommand."""
  if overrides:
    raise UserError(f'attention takes no --config flags (got {overrides[0]!r})')
  import bertjax
  model, tokenizer = bertjax.from_pretrained(args.workdir)
  tokens, probs_HLL = layer_attentions(model, tokenizer, args.text, args.text_pair,
                                       args.layer)
  layer = args.layer % model.config.num_layers
  draw(tokens, probs_HLL, args.out, f'{args.workdir}: layer {layer}')
  print(f'wrote {args.out}: {probs_HLL.shape[0]} heads of layer {layer}, {len(tokens)} tokens')
