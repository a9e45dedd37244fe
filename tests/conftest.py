import atexit
import os
import shutil
import sys
import tempfile

import pytest

# Tests run on the CPU, with 8 host devices so mesh tests have something to shard over.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Runs in tests must not fill the user's compilation cache (~/.cache/bertjax/jax).
os.environ.setdefault('BERTJAX_COMPILATION_CACHE', 'off')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8')

# One persistent compilation cache for the whole run, subprocesses included (they
# inherit the environment): many tests compile the same tiny programs under fresh
# workdirs, and compiling is most of their time. A hit is the executable XLA built for
# the identical program, so no check changes. Cold each run; a JAX_COMPILATION_CACHE_DIR
# set by the caller is used instead.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix='bertjax-tests-xla-')
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache_dir
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture
def restores_the_compile_cache_settings():
  # sweep.run sets JAX's persistent compilation cache (process-wide) for its own
  # workdir; the tests after this one keep the suite's settings.
  import jax  # here: the environment above is set before jax is first imported
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  before = {name: getattr(jax.config, name) for name in names}
  yield
  for name, value in before.items():
    jax.config.update(name, value)
