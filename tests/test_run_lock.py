"""One run at a time on a workdir: the lock, its expiry and `bertjax unlock`."""
import json
import os
import subprocess
import sys
import time

import pytest

from bertjax import run_lock
from bertjax.cli import main
from bertjax.errors import UserError


def _write_lock(workdir, **fields):
  holder = dict(run_id='other', host='elsewhere', pid=1, command='bertjax train ...',
                started=time.time(), heartbeat=time.time())
  holder.update(fields)
  (workdir / '.lock').write_text(json.dumps(holder))


def test_second_run_is_refused_naming_the_holder(tmp_path):
  with run_lock.RunLock(tmp_path, command='bertjax train --workdir w'):
    with pytest.raises(UserError, match=rf'in use by `bertjax train --workdir w` \(pid '
                                        rf'{os.getpid()} on .*bertjax unlock'):
      with run_lock.RunLock(tmp_path):
        pass
  assert not (tmp_path / '.lock').exists()  # released on exit
  with run_lock.RunLock(tmp_path):  # and free again
    assert (tmp_path / '.lock').exists()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  import socket
  _write_lock(tmp_path, host=socket.gethostname(), pid=dead.pid)
  with run_lock.RunLock(tmp_path) as lock:
    assert run_lock.read_holder(tmp_path).run_id == lock.holder.run_id
  assert 'taking over' in caplog.text


def test_lock_expires_without_heartbeat(tmp_path):
  _write_lock(tmp_path, heartbeat=time.time() - 60)  # another host, heartbeat fresh enough
  with pytest.raises(UserError, match='in use by'):
    with run_lock.RunLock(tmp_path):
      pass
  _write_lock(tmp_path, heartbeat=time.time() - run_lock.EXPIRES_SECONDS - 1)
  with run_lock.RunLock(tmp_path):
    pass


def test_heartbeat_refreshes_and_notices_a_broken_lock(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(run_lock, 'HEARTBEAT_SECONDS', 0.05)
  with run_lock.RunLock(tmp_path) as lock:
    first = run_lock.read_holder(tmp_path).heartbeat
    time.sleep(0.3)
    assert run_lock.read_holder(tmp_path).heartbeat > first
    _write_lock(tmp_path)  # somebody broke it and another run took it
    time.sleep(0.3)
    assert run_lock.read_holder(tmp_path).run_id == 'other'
  assert run_lock.read_holder(tmp_path).run_id == 'other'  # not removed: not ours
  assert 'no longer holds it' in caplog.text
  del lock


def test_unlock_command(tmp_path, capsys):
  _write_lock(tmp_path)
  assert main(['unlock', '--workdir', str(tmp_path)]) == 0
  assert 'removed the lock that `bertjax train ...`' in capsys.readouterr().out
  assert not (tmp_path / '.lock').exists()
  assert main(['unlock', '--workdir', str(tmp_path)]) == 0
  assert 'was not locked' in capsys.readouterr().out


def test_a_second_train_on_a_busy_workdir_exits_at_once(tmp_path, capsys):
  from conftest import ROOT
  workdir = str(tmp_path / 'run')
  quickstart = os.path.join(ROOT, 'experiments', 'quickstart.py') + ':local'
  first = subprocess.Popen(
      [sys.executable, '-m', 'bertjax', 'train', '--config', quickstart, '--workdir', workdir,
       '--config.train.steps=100000'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while run_lock.read_holder(workdir) is None:
      assert first.poll() is None and time.time() < deadline
      time.sleep(0.2)
    started = time.time()
    assert main(['train', '--config', quickstart, '--workdir', workdir]) == 2
    err = capsys.readouterr().err
    assert f'in use by `bertjax train --config {quickstart}' in err and err.count('\n') == 1
    assert time.time() - started < 30  # at once: before any data or model work
  finally:
    first.kill()
    first.wait()
  with run_lock.RunLock(workdir):  # the killed run's lock is stale on this host
    pass
