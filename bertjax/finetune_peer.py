"""The old spelling of `bertjax bench --finetune`, kept so existing commands still run."""
from __future__ import annotations

import sys

from bertjax import cli

if __name__ == '__main__':
  print('bertjax: python -m bertjax.finetune_peer is now bertjax bench --finetune',
        file=sys.stderr)
  sys.exit(cli.main(['bench', '--finetune', *sys.argv[1:]]))
