"""FLOPs per trained token (DESIGN.md) and device peaks, for MFU.

Training FLOPs per token ≈ 6·N_encoder + 12·layers·d·L (bidirectional attention)
+ 6·(d² + d·V)·(P/L) for the MLM head, which runs only at the P masked positions.
"""
from __future__ import annotations

# Dense bfloat16 peak FLOP/s per device, by `device_kind` prefix (lower-cased).
PEAK_FLOPS = {
    'nvidia h100': 989e12, 'nvidia h200': 989e12, 'nvidia a100': 312e12,
    'nvidia l4': 121e12, 'tpu v4': 275e12, 'tpu v5 lite': 197e12, 'tpu v5e': 197e12,
    'tpu v5p': 459e12, 'tpu v5': 459e12, 'tpu v6 lite': 918e12, 'tpu v6e': 918e12,
}


def encoder_params(model_cfg) -> int:
  """Weights of the transformer layers (embeddings excluded), biases included."""
  d, f = model_cfg.hidden_size, model_cfg.intermediate_size
  per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d  # attn, FFN, 2 LayerNorms
  return model_cfg.num_layers * per_layer


def train_flops_per_token(model_cfg, seq_len: int, max_predictions: int) -> float:
  d, v = model_cfg.hidden_size, model_cfg.vocab_size
  return (6 * encoder_params(model_cfg)
          + 12 * model_cfg.num_layers * d * seq_len
          + 6 * (d * d + d * v) * max_predictions / seq_len)


def peak_flops(device) -> float | None:
  """The device's dense bf16 peak, or None where unknown (e.g. CPUs)."""
  kind = getattr(device, 'device_kind', '').lower()
  for prefix, peak in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
    if kind.startswith(prefix):
      return peak
  return None
