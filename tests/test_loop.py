"""The training loop on real MNIST (:smoke): resume, plateau, early stopping, NaN."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import smoke

from jaxddpm import checkpoint, loop, progress, train


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resumed_run_equals_uninterrupted(smoke_config, tmp_path, smoke_reference):
  full_dir, full = smoke_reference
  assert full["step"] == 32 and os.path.isfile(full["samples"])
  part = str(tmp_path / "part")
  with smoke_config.unlocked():
    smoke_config.train.num_steps = 11  # Stop mid-epoch (16 steps per epoch)...
  assert loop.train_and_evaluate(smoke_config, part)["step"] == 11
  # A run that ends mid-epoch validates its last step: with no epoch end before
  # it, that is the best so far, and "best" (what sampling loads) is step 11.
  (end,) = [m for m in progress.read_metrics(os.path.join(part, "metrics.jsonl"))
            if m.get("end_of_run")]
  assert end["step"] == 11 and end["best_val_loss"] == end["val_loss"]
  assert os.listdir(os.path.join(part, "checkpoints", "best")) == ["11"]
  _leaves_equal(checkpoint.load_checkpoint(part)[1],
                checkpoint.load_checkpoint(part, which="latest")[1])
  with smoke_config.unlocked():
    smoke_config.train.num_steps = 0  # ...then rerun to the end in the same workdir.
  assert loop.train_and_evaluate(smoke_config, part)["step"] == 32
  _, a = checkpoint.load_checkpoint(full_dir, which="latest", ema=False)
  _, b = checkpoint.load_checkpoint(part, which="latest", ema=False)
  _leaves_equal(a, b)
  _, a = checkpoint.load_checkpoint(full_dir, which="latest")
  _, b = checkpoint.load_checkpoint(part, which="latest")
  _leaves_equal(a, b)
  # A kept step by number (a point of a training curve): the two runs agree there
  # too, and it is not the last step's.
  _, a24 = checkpoint.load_checkpoint(full_dir, which=24)
  _leaves_equal(a24, checkpoint.load_checkpoint(part, which="24")[1])
  assert not np.array_equal(jax.tree.leaves(a24)[0], jax.tree.leaves(a)[0])
  with pytest.raises(ValueError, match=r"no checkpoint at step 20 .*kept: \[16, 24, 32\]"):
    checkpoint.load_checkpoint(part, which=20)
  with pytest.raises(ValueError, match="which must be 'best', 'latest' or a kept step"):
    checkpoint.load_checkpoint(part, which="last")
  metrics = progress.read_metrics(os.path.join(part, "metrics.jsonl"))
  # Where the time went: every record is stamped, epoch ends and saves are timed.
  times = [m["wall_time"] for m in metrics]
  assert times == sorted(times) and times[-1] - times[0] > 0
  assert all(isinstance(m["val_seconds"], float) for m in metrics if "val_loss" in m)
  saved = {m["step"] for m in metrics if "checkpoint_seconds" in m}
  assert {8, 11, 16, 24, 32} <= saved  # Every 8 steps, the stop at 11, epoch ends.
  # The epoch ends' validations are the uninterrupted run's (the reference run ends
  # on an epoch end: it has no run-end validation).
  assert [m["val_loss"] for m in metrics if "val_loss" in m and not m.get("end_of_run")] == [
      m["val_loss"] for m in progress.read_metrics(os.path.join(full_dir, "metrics.jsonl"))
      if "val_loss" in m]


def test_ctrl_c_saves_the_last_finished_chunk(smoke_config, tmp_path, monkeypatch,
                                              smoke_reference):
  """KeyboardInterrupt while training keeps the work since the last checkpoint, except
  at an epoch end whose validation has not run; the rerun equals an uninterrupted run.
  A stop signal whose KeyboardInterrupt Python dropped (raised inside a callback it
  calls from C: only loop.request_stop stands) stops training after the next chunk."""
  _, want = checkpoint.load_checkpoint(smoke_reference[0], which="latest", ema=False)
  write = progress.MetricsLog.write
  # Interrupts arrive where the loop blocks: fetching a chunk's metrics to log them.
  # Saves every 8 steps; 16 steps per epoch; 1 step per chunk.
  for stop_at, kept, dropped in ((12, 12, False), (16, 8, False), (12, 13, True)):
    fired = []

    def interrupting(self, **record):
      if record.get("step") == stop_at and "loss" in record and not fired:
        fired.append(True)
        loop.request_stop()  # As launch.py's signal handler does, then raises.
        if not dropped:
          raise KeyboardInterrupt
      return write(self, **record)

    monkeypatch.setattr(progress.MetricsLog, "write", interrupting)
    run = tmp_path / f"stop_{stop_at}_{dropped}"
    with pytest.raises(KeyboardInterrupt):
      loop.train_and_evaluate(smoke_config, str(run))
    assert max(int(d) for d in os.listdir(run / "checkpoints" / "latest") if d.isdigit()) == kept
    assert not loop._stop.is_set()  # Handled: the next run in this process is not stopped.
    monkeypatch.setattr(progress.MetricsLog, "write", write)
    if dropped:
      continue  # Saved as the first case was; its rerun is checked there.
    assert loop.train_and_evaluate(smoke_config, str(run))["step"] == 32
    _, got = checkpoint.load_checkpoint(str(run), which="latest", ema=False)
    _leaves_equal(want, got)


def test_steps_per_dispatch_does_not_change_training(smoke_config, tmp_path, monkeypatch,
                                                    smoke_reference):
  """K is a speed knob only: 5 steps per call (16-step epochs: chunks of 5, 5, 5
  and a masked 1-of-5) train exactly as 1 step per call (the reference run), and
  log the same steps; and each chunk has finished before the next is dispatched."""
  chunks, ready_at_dispatch = [], []
  make_chunk_fn = loop.make_chunk_fn

  def recording(*a, **kw):
    chunks.append(make_chunk_fn(*a, **kw))
    last = []

    def call(*args):
      # One chunk in flight at most: the previous one has finished when the next
      # is dispatched (so an interrupt saves within one chunk's time).
      ready_at_dispatch.append(all(x.is_ready() for x in jax.tree.leaves(last)))
      out = chunks[-1](*args)
      last[:] = [out[1]]
      return out
    return call

  monkeypatch.setattr(loop, "make_chunk_fn", recording)
  with smoke_config.unlocked():
    smoke_config.train.steps_per_dispatch = 5
  assert loop.train_and_evaluate(smoke_config, str(tmp_path))["step"] == 32
  # One compile for the whole run: the epoch end's eager updates leave the state
  # placed as the chunk expects (they once cost a second compile, ~1 min on a GPU).
  assert chunks[-1]._top._cache_size() == 1
  assert len(ready_at_dispatch) == 8 and all(ready_at_dispatch)
  runs = {}
  for k, workdir in ((1, smoke_reference[0]), (5, str(tmp_path))):
    records = progress.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    runs[k] = (checkpoint.load_checkpoint(workdir, which="latest", ema=False)[1],
               [(r["step"], r["val_loss"]) for r in records if "val_loss" in r])
  (p1, v1), (p5, v5) = runs[1], runs[5]
  assert [s for s, _ in v1] == [s for s, _ in v5] == [16, 32]
  np.testing.assert_allclose([v for _, v in v5], [v for _, v in v1], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(p5), jax.tree.leaves(p1), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_plateau_and_early_stopping_on_scripted_losses(smoke_config):
  smoke_config.optim.update(plateau_factor=0.5, plateau_patience=2, plateau_cooldown=1)
  plateau = train.make_plateau(smoke_config.optim)
  state = train.create_train_state({"w": jnp.zeros(3)}, train.make_optimizer(smoke_config.optim),
                                   plateau)
  seen = []
  for val in [1.0, 0.8, 0.9, 0.85, 0.81, 0.82, 0.83, 0.7, 0.75]:
    state, improved = train.end_epoch(state, val, plateau)
    seen.append((improved, int(state.bad_epochs), float(state.plateau.scale)))
  assert seen == [
      (True, 0, 1.0), (True, 0, 1.0),
      (False, 1, 1.0), (False, 2, 0.5),  # Patience 2 reached: halve the lr...
      (False, 3, 0.5),  # ...cooldown epoch: not counted towards the next reduction.
      (False, 4, 0.5), (False, 5, 0.25),
      (True, 0, 0.25), (False, 1, 0.25)]
  assert float(state.best_val_loss) == pytest.approx(0.7)


def test_plateau_and_early_stopping_survive_a_resume_and_a_rerun_after_the_stop(
    smoke_config, tmp_path, monkeypatch):
  """Scripted validation losses that never improve after the first epoch; plateau
  patience 1 (factor 0.5), early-stopping patience 3. By hand: the lr scale is 1,
  0.5, 0.25, 0.125 after epochs 1-4, bad_epochs 0, 1, 2, 3, and training stops
  after epoch 4 (step 64 of 80). The run stops at step 32 and resumes: that only
  holds if the plateau state, best loss and bad_epochs come back from the
  checkpoint (reset, epoch 3 would count as an improvement and training would run
  to step 80). Running the finished command again trains nothing."""
  losses = iter([0.5, 0.6, 0.7, 0.8])
  monkeypatch.setattr(loop, "validation_loss", lambda *a, **k: next(losses))
  smoke_config.train.update(num_epochs=5, early_stopping_patience=3, num_steps=32)
  smoke_config.optim.update(plateau_patience=1, plateau_factor=0.5, plateau_cooldown=0)
  assert loop.train_and_evaluate(smoke_config, str(tmp_path))["step"] == 32
  smoke_config.train.num_steps = 0
  summary = loop.train_and_evaluate(smoke_config, str(tmp_path))
  assert summary["stopped_early"] and summary["step"] == 64
  assert summary["best_val_loss"] == pytest.approx(0.5)
  records = progress.read_metrics(str(tmp_path / "metrics.jsonl"))
  ends = [(r["step"], r["lr_scale"], r["bad_epochs"]) for r in records if "val_loss" in r]
  assert ends == [(16, 1.0, 0), (32, 0.5, 1), (48, 0.25, 2), (64, 0.125, 3)]
  _, params = checkpoint.load_checkpoint(str(tmp_path), which="latest", ema=False)
  monkeypatch.setattr(loop, "validation_loss", lambda *a, **k: pytest.fail("trained again"))
  again = loop.train_and_evaluate(smoke_config, str(tmp_path))
  assert again["stopped_early"] and again["step"] == 64
  _leaves_equal(params, checkpoint.load_checkpoint(str(tmp_path), which="latest", ema=False)[1])
  assert not [r for r in progress.read_metrics(str(tmp_path / "metrics.jsonl"))[len(records):]
              if "loss" in r]


def test_nan_stops_with_step_and_keeps_last_checkpoint(smoke_config, tmp_path, monkeypatch):
  """The 13th step's loss and params turn NaN (poisoned on the host as its chunk
  returns, so the run uses the reference run's compiled programs)."""
  make_chunk_fn = loop.make_chunk_fn

  def poisoned(*args, **kwargs):
    chunk = make_chunk_fn(*args, **kwargs)

    def chunk_with_nan(state, images, labels, perm, offset, key, n):
      state, metrics = chunk(state, images, labels, perm, offset, key, n)
      if int(state.step) > 12:  # This chunk (of one step) took the 13th step.
        state = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
        metrics = dict(metrics, loss=metrics["loss"] * jnp.nan)
      return state, metrics
    return chunk_with_nan

  assert smoke_config.train.steps_per_dispatch == 1
  monkeypatch.setattr(loop, "make_chunk_fn", poisoned)
  with pytest.raises(loop.NonFiniteError, match="step 13"):
    loop.train_and_evaluate(smoke_config, str(tmp_path))
  _, params = checkpoint.load_checkpoint(str(tmp_path), which="latest")
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints" / "latest") if d.isdigit())
  assert steps and max(steps) <= 12


def test_load_checkpoint_errors(smoke_config, tmp_path):
  with pytest.raises(ValueError, match="config.json"):
    checkpoint.load_checkpoint(str(tmp_path))
  checkpoint.save_config(str(tmp_path), smoke_config)
  with pytest.raises(ValueError, match="no checkpoint"):
    checkpoint.load_checkpoint(str(tmp_path))
  with pytest.raises(ValueError, match="which"):
    checkpoint.load_checkpoint(str(tmp_path), which="first")
  for damage in ("{cut short", '{"data": 3}', "[]"):
    (tmp_path / "config.json").write_text(damage)
    with pytest.raises(ValueError, match="config.json is damaged.*delete it and run the "
                                         "training command again"):
      checkpoint.load_checkpoint(str(tmp_path))


def test_checkpoint_of_another_architecture_is_a_clear_error(smoke_config, tmp_path):
  with smoke_config.unlocked():
    smoke_config.train.num_steps = 4
  loop.train_and_evaluate(smoke_config, str(tmp_path))
  smoke_config.model.base_channels = 16
  with pytest.raises(ValueError, match=r"another config \(model.base_channels: 8 -> 16\)"):
    loop.train_and_evaluate(smoke_config, str(tmp_path))
  saved = json.load(open(tmp_path / "config.json"))
  assert saved["model"]["base_channels"] == 8  # The workdir's record is untouched.
  # The same shapes but another dataset restored fine and trained on, mixing two runs.
  smoke_config.model.base_channels = 8
  smoke_config.data.dataset = "fashion_mnist"
  with pytest.raises(ValueError, match="data.dataset: 'mnist' -> 'fashion_mnist'.*new --workdir"):
    loop.train_and_evaluate(smoke_config, str(tmp_path))
  # Where the data lives, the length and the optimizer's settings may change; the
  # run says so. (The plateau patience: a setting outside the compiled step, so
  # this resume loads the programs of the first run instead of compiling anew.)
  smoke_config.data.dataset = "mnist"
  with smoke_config.unlocked():
    smoke_config.train.num_steps = 6
    smoke_config.optim.plateau_patience = 7
    smoke_config.data.dir = smoke_config.data.dir + "/"
  assert loop.train_and_evaluate(smoke_config, str(tmp_path))["step"] == 6
  resumes = [m for m in progress.read_metrics(str(tmp_path / "metrics.jsonl"))
             if m.get("event") == "resume"]
  assert len(resumes) == 1 and resumes[0]["step"] == 4
  assert set(resumes[0]["changed"]) == {"train.num_steps", "optim.plateau_patience", "data.dir"}
  assert resumes[0]["changed"]["train.num_steps"] == [4, 6]


def test_a_second_training_run_in_one_workdir_is_an_error(smoke_config, tmp_path):
  import fcntl
  with open(tmp_path / ".lock", "a+") as held:  # What a running training process holds.
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("pid 123 on node7")
    held.flush()
    with pytest.raises(ValueError, match=r"in use by another training run \(pid 123 on node7\)"):
      loop.train_and_evaluate(smoke_config, str(tmp_path))
  assert not os.path.exists(tmp_path / "config.json")  # Nothing of the run was touched.
  with smoke_config.unlocked():
    smoke_config.train.num_steps = 2
  assert loop.train_and_evaluate(smoke_config, str(tmp_path))["step"] == 2
  with open(tmp_path / ".lock", "a+") as f:  # Released at the end of the run: no
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError here.


def test_unwritable_workdir(smoke_config, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(ValueError, match="cannot write to workdir"):
    loop.train_and_evaluate(smoke_config, str(blocker / "run"))


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(smoke_config, tmp_path,
                                                                   smoke_reference, capfd):
  """Resuming skips a newest checkpoint that does not restore, keeps it aside in
  checkpoints/damaged/, says so, and continues from the one before: the run then
  ends exactly as the uninterrupted one. Scripts loading it get an error instead
  (they asked for that checkpoint). With none readable, training says which."""
  with smoke_config.unlocked():
    smoke_config.train.num_steps = 16
  loop.train_and_evaluate(smoke_config, str(tmp_path))
  latest = tmp_path / "checkpoints" / "latest"
  for f in (latest / "16").rglob("d/*"):
    f.write_bytes(os.urandom(64))  # Damage every array chunk, keep the layout.
  with pytest.raises(ValueError, match="cannot read the checkpoint at step 16.*damaged"):
    checkpoint.load_checkpoint(str(tmp_path), which="latest")
  with smoke_config.unlocked():
    smoke_config.train.num_steps = 0
  capfd.readouterr()
  assert loop.train_and_evaluate(smoke_config, str(tmp_path))["step"] == 32
  assert "checkpoint(s) at step 16 did not restore" in capfd.readouterr().err
  assert (tmp_path / "checkpoints" / "damaged" / "16").is_dir()
  resume = [r for r in progress.read_metrics(str(tmp_path / "metrics.jsonl"))
            if r.get("event") == "resume"]
  assert [(r["step"], r["damaged"]) for r in resume] == [(8, [16])]
  _leaves_equal(checkpoint.load_checkpoint(smoke_reference[0], which="latest", ema=False)[1],
                checkpoint.load_checkpoint(str(tmp_path), which="latest", ema=False)[1])
  for f in (tmp_path / "checkpoints" / "latest").rglob("d/*"):
    f.write_bytes(os.urandom(64))
  with pytest.raises(ValueError, match="cannot restore the checkpoint at step 32"):
    loop.train_and_evaluate(smoke_config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints" / "damaged")) == ["16"]  # Nothing moved.


def test_failed_checkpoint_write_stops_cleanly_and_keeps_the_last_one(smoke_config, tmp_path,
                                                                      monkeypatch):
  import errno

  import orbax.checkpoint as ocp
  real_save = ocp.CheckpointManager.save

  def disk_full_from_step_16(self, step, *args, **kwargs):
    if step >= 16:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full_from_step_16)
  with pytest.raises(checkpoint.CheckpointWriteError,
                     match=r"step 16.*No space left.*resume from the last complete checkpoint "
                           r"\(step 8\)"):
    loop.train_and_evaluate(smoke_config, str(tmp_path))
  _, params = checkpoint.load_checkpoint(str(tmp_path), which="latest")
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))
  records = progress.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert max(r["step"] for r in records) == 16  # The log is intact up to the failure.


def test_batch_not_divisible_by_device_count_is_a_clear_error(smoke_config, tmp_path,
                                                              monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 3)  # 32 images over 3 devices.
  with pytest.raises(ValueError, match="batch_size=32 is not divisible by the 3 devices"):
    loop.train_and_evaluate(smoke_config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # Refused before touching the workdir.


def test_a_chunk_of_k_steps_is_k_single_steps_in_one_program(tiny_config):
  """A chunk of 4 steps in one lax.scan, each gathering its batch by the epoch
  permutation, is the same training as the steps dispatched one by one: 4 of 4
  live, and 3 of 4 with the 4th masked (an epoch's short last chunk), which reads
  past the permutation's end and is dropped. The number of live steps is traced:
  every call, whatever the step, offset or epoch permutation, runs one compiled
  program, which traced the step once (chex counts)."""
  model, _, tx, step, _ = train.make_steps(tiny_config)
  params = train.init_params(model, tiny_config, jax.random.key(0))
  fresh = lambda: train.create_train_state(jax.tree.map(jnp.copy, params), tx)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8))
  labels = jnp.arange(20, dtype=jnp.int32) % 4
  perm = jax.random.permutation(jax.random.key(1), 20)
  key = jax.random.key(2)
  # The same program as test_conv.py's (shapes, K): one compile serves both.
  chunk = loop.make_chunk_fn(chex.assert_max_traces(lambda *a: step(*a), n=1), 4, steps=4)
  for offset, n in ((1, 4), (2, 3)):  # 5 batches an epoch: (2, 3) masks a 6th.
    state, losses = fresh(), []
    for i in range(offset, offset + n):
      idx = perm[i * 4:(i + 1) * 4]
      state, m = step(state, {"image": images[idx], "label": labels[idx]}, key)
      losses.append(float(m["loss"]))
    chunked, metrics = chunk(fresh(), images, labels, perm, offset, key, n)
    assert np.asarray(metrics["loss"]).shape == (4,)
    assert int(chunked.step) == int(state.step) == n
    np.testing.assert_allclose(np.asarray(metrics["loss"])[:n], losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(state), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Steady state, as the loop runs it: two epochs of new permutations, each a full
  # chunk and a masked one, the state carried through; still the one trace.
  state = fresh()
  for epoch in range(2):
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), 20)
    for offset, n in ((0, 4), (4, 1)):
      state, metrics = chunk(state, images, labels, perm, offset, key, n)
  assert int(state.step) == 10 and np.isfinite(np.asarray(metrics["loss"])[:1]).all()


def test_chunks_stop_at_multiples_of_k_epoch_ends_and_the_end():
  steps_per_epoch, total, K = 890, 1200, 8
  step, lengths = 0, []
  while step < total:
    k = loop._chunk_length(step, steps_per_epoch, total, K)
    assert 1 <= k <= K
    lengths.append(k)
    step += k
  assert step == total
  ends = set(np.cumsum(lengths).tolist())
  assert steps_per_epoch in ends  # The epoch end (validation, checkpoint) is a chunk end.
  # Within an epoch, chunks end at multiples of K (or at the epoch's or run's end).
  assert all((e % steps_per_epoch) % K == 0 or e == total for e in ends)
  # A run resumed at any chunk end splits the rest as the uninterrupted run did.
  resumed, step = [], lengths[0] + lengths[1]
  while step < total:
    resumed.append(loop._chunk_length(step, steps_per_epoch, total, K))
    step += resumed[-1]
  assert resumed == lengths[2:]


def test_a_small_validation_set_shrinks_the_eval_batch_before_training():
  """A stand-in CelebA's 340 validation images once failed the first epoch end,
  after minutes of training, against eval_batch_size=500."""
  assert loop._eval_batch_size(500, 340) == 340
  assert loop._eval_batch_size(500, 1000) == 500
  with pytest.raises(ValueError, match="raise data.val_fraction"):
    loop._eval_batch_size(100, 0)


def test_a_run_logs_to_tensorboard_and_loads_without_warnings(smoke_reference, caplog, capfd):
  """TensorBoard (`tensorboard --logdir`) gets the loss at every logged step, the
  validation loss at each epoch end and the final sample grid; loading the run
  from a script logs and prints nothing (Orbax's read-only notes are not news)."""
  workdir, summary = smoke_reference
  events = smoke.tensorboard_events(workdir)
  records = progress.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  want = lambda key: sorted((r["step"], pytest.approx(r[key])) for r in records
                            if r.get(key) is not None and "event" not in r)
  assert sorted((s, v) for t, s, v in events if t == "loss") == want("loss")
  assert sorted((s, v) for t, s, v in events if t == "val_loss") == want("val_loss")
  assert [s for t, s, _ in events if t == "samples"] == [summary["step"]]
  capfd.readouterr()
  with caplog.at_level("INFO"):
    checkpoint.load_checkpoint(workdir)
  assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
  assert capfd.readouterr() == ("", "")
