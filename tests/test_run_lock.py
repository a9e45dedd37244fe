"""One run at a time on a workdir: the lock, its expiry and `bertjax unlock`."""
import json
import os
import random
import subprocess
import sys
import threading
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


def test_of_two_runs_taking_over_one_stale_lock_at_once_exactly_one_wins(tmp_path, monkeypatch):
  # Both judge the lock stale before either takes it over; then each goes on after a
  # random pause, so that the take-overs interleave differently from round to round.
  judged_stale = threading.Barrier(2)
  is_stale = run_lock.Holder.is_stale

  def both_judge_then_race(holder, now=None):
    stale = is_stale(holder, now)
    if holder.run_id == 'gone':
      judged_stale.wait(timeout=10)
      time.sleep(random.uniform(0, 0.005))
    return stale
  monkeypatch.setattr(run_lock.Holder, 'is_stale', both_judge_then_race)

  def contend(outcomes, decided):
    try:
      with run_lock.RunLock(tmp_path):
        outcomes.append('holds')
        decided.wait(timeout=10)  # hold it until the other has decided too
    except UserError as e:
      outcomes.append(str(e))
      decided.wait(timeout=10)

  for _ in range(30):
    _write_lock(tmp_path, run_id='gone', heartbeat=time.time() - run_lock.EXPIRES_SECONDS - 1)
    judged_stale.reset()
    outcomes, decided = [], threading.Barrier(2)
    threads = [threading.Thread(target=contend, args=(outcomes, decided)) for _ in range(2)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert outcomes.count('holds') == 1, outcomes
    assert 'in use by' in next(o for o in outcomes if o != 'holds')
    assert os.listdir(tmp_path) == []  # no lock, claim or moved-aside file left


def test_a_lock_rewritten_after_it_was_read_is_not_removed(tmp_path):
  lock = run_lock._lock_file(tmp_path)  # pylint: disable=protected-access
  _write_lock(tmp_path, run_id='slow', heartbeat=time.time() - run_lock.EXPIRES_SECONDS - 1)
  _, version = lock.read()
  _write_lock(tmp_path, run_id='slow')  # its holder's late heartbeat
  assert not lock.remove(version)
  assert run_lock.read_holder(tmp_path).run_id == 'slow'
  assert os.listdir(tmp_path) == ['.lock']


def test_a_heartbeat_does_not_overwrite_a_lock_taken_over_since_it_was_read(tmp_path):
  lock = run_lock._lock_file(tmp_path)  # pylint: disable=protected-access
  _write_lock(tmp_path, run_id='slow')
  _, version = lock.read()  # the slow holder's heartbeat reads its lock, then stalls
  assert lock.remove(version) and lock.create(b'{"run_id": "new"}')  # judged stale
  assert not lock.replace(b'{"run_id": "slow"}', version)
  assert json.loads((tmp_path / '.lock').read_text())['run_id'] == 'new'
  _, version = lock.read()
  os.link(tmp_path / '.lock', f'{tmp_path}/.lock.claim-{version[1]}-{version[2][:16]}')
  assert not lock.replace(b'{"run_id": "slow"}', version)  # a take-over has claimed it
  assert json.loads((tmp_path / '.lock').read_text())['run_id'] == 'new'


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


def test_unlock_reads_a_lock_again_that_changed_before_it_was_removed(tmp_path, capsys,
                                                                      monkeypatch):
  remove = run_lock._LocalLockFile.remove  # pylint: disable=protected-access
  heartbeats = []

  def heartbeat_first(lock, version):
    if not heartbeats:  # the holder's heartbeat lands between unlock's read and remove
      heartbeats.append(1)
      _write_lock(tmp_path, command='bertjax train --beat')
    return remove(lock, version)
  monkeypatch.setattr(run_lock._LocalLockFile, 'remove', heartbeat_first)  # pylint: disable=protected-access
  _write_lock(tmp_path)
  assert main(['unlock', '--workdir', str(tmp_path)]) == 0
  assert 'removed the lock that `bertjax train --beat`' in capsys.readouterr().out
  assert not (tmp_path / '.lock').exists()


def test_unlock_says_plainly_when_it_removed_nothing(tmp_path, capsys):
  _write_lock(tmp_path)
  _, version = run_lock._lock_file(tmp_path).read()  # pylint: disable=protected-access
  os.link(tmp_path / '.lock', f'{tmp_path}/.lock.claim-{version[1]}-{version[2][:16]}')
  assert main(['unlock', '--workdir', str(tmp_path)]) == 2  # another command is removing it
  err = capsys.readouterr().err
  assert 'nothing was removed' in err and err.count('\n') == 1, err
  assert run_lock.read_holder(tmp_path).run_id == 'other'


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
