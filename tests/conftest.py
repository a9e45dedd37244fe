import os
import sys

# Tests run on the CPU, with 8 host devices so mesh tests have something to shard over.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Runs in tests must not fill the user's compilation cache (~/.cache/bertjax/jax).
os.environ.setdefault('BERTJAX_COMPILATION_CACHE', 'off')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
