"""Post-hoc EMA: the weights of an EMA against their closed form and against
train.ema_update itself, and a synthesized EMA against one trained with that length."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxddpm import checkpoint, posthoc_ema, train


def _run_ema(thetas, decay, std):
  """The EMA that train.ema_update keeps over iterates thetas[1:], from thetas[0]."""
  ema = {"w": jnp.asarray(thetas[0], jnp.float32)}
  out = [ema["w"]]
  for n, theta in enumerate(thetas[1:]):
    ema = train.ema_update(ema, {"w": jnp.asarray(theta, jnp.float32)}, jnp.int32(n), decay, std)
    out.append(ema["w"])
  return np.asarray(out, np.float64)  # out[s]: the EMA after s updates.


@pytest.mark.parametrize("std", [0.05, 0.15])
def test_power_ema_weights_have_their_closed_form(std):
  """d_n = (n/(n+1))^(γ+1) telescopes: update n keeps ((n+1)^(γ+1) - n^(γ+1)) / S^(γ+1)
  of an S-update EMA, and the init nothing."""
  g1, s = train.power_ema_gamma(std) + 1.0, 40
  n = np.arange(s, dtype=np.float64)
  expected = np.concatenate([[0.0], ((n + 1) ** g1 - n ** g1) / s ** g1])
  np.testing.assert_allclose(posthoc_ema.ema_weights(s, 0.999, std), expected, atol=1e-12)


@pytest.mark.parametrize("decay,std", [(0.999, 0.0), (0.9, 0.0), (0.999, 0.1)])
def test_ema_weights_are_what_ema_update_computes(decay, std):
  """Iterates that are unit vectors: the EMA's value is its weight vector."""
  s = 30
  eye = np.eye(s + 1)
  np.testing.assert_allclose(_run_ema(eye, decay, std)[-1],
                             posthoc_ema.ema_weights(s, decay, std), atol=1e-6)
  assert posthoc_ema.ema_weights(s, decay, std).sum() == pytest.approx(1.0)


def test_a_kept_snapshot_of_the_target_is_returned_as_it_is():
  coeffs, residual = posthoc_ema.fit([10, 20, 30], 20, 0.1, 0.999, 0.1)
  np.testing.assert_allclose(coeffs, [0, 1, 0], atol=1e-9)
  assert residual < 1e-9


def test_snapshots_at_every_step_give_the_trained_ema_exactly():
  """A run kept with the warm-up EMA at every step; its power EMA of std 0.1, summed
  from the snapshots, against the EMA that a run with optim.ema_std=0.1 keeps."""
  rng = np.random.default_rng(0)
  thetas = np.cumsum(rng.normal(size=(61, 5)), axis=0)  # A random walk of params.
  snapshots = _run_ema(thetas, 0.999, 0.0)
  coeffs, residual = posthoc_ema.fit(range(61), 60, 0.1, 0.999, 0.0)
  assert residual < 1e-8
  np.testing.assert_allclose(coeffs @ snapshots, _run_ema(thetas, 0.999, 0.1)[-1], atol=2e-4)


def test_denser_snapshots_fit_longer_and_shorter_emas_better():
  """Snapshots of the γ = 8 warm-up (std ≈ 0.09) span shorter (0.05) and longer
  (0.15) power EMAs, the closer the denser they are; the residual is the relative
  distance of the combination's weights from the target's."""
  for std in (0.05, 0.15):
    residuals = []
    for every in (50, 10, 5):
      steps = list(range(every, 201, every))
      coeffs, residual = posthoc_ema.fit(steps, 200, std, 0.999, 0.0)
      got = sum(c * posthoc_ema.ema_weights(s, 0.999, 0.0, 201) for c, s in zip(coeffs, steps))
      target = posthoc_ema.ema_weights(200, 0.0, std)
      assert np.linalg.norm(got - target) / np.linalg.norm(target) == pytest.approx(residual)
      residuals.append(residual)
    assert residuals[0] > residuals[1] > residuals[2] and residuals[2] < 0.07, residuals


def test_write_run_is_a_run_that_loads(smoke_reference, tmp_path):
  """On the shared :smoke run (snapshots at steps 16, 24, 32): the new run's best
  checkpoint is the source's step 32 with the synthesized EMA, which is the fit's
  combination of the three snapshots' EMA params."""
  workdir, _ = smoke_reference
  out = str(tmp_path / "ema0.05")
  info = posthoc_ema.write_run(workdir, out, 0.05)
  assert info["step"] == 32 and info["snapshot_steps"] == [16, 24, 32]
  assert abs(info["coefficients"][-1] - 1.0) > 0.01  # Not merely step 32's own EMA.
  with open(os.path.join(out, "posthoc_ema.json")) as f:
    assert json.load(f)["coefficients"] == info["coefficients"]
  config, params = checkpoint.load_checkpoint(out)
  assert config.to_dict() == checkpoint.load_config(workdir).to_dict()
  _, raw_new = checkpoint.load_checkpoint(out, ema=False)
  _, raw_old = checkpoint.load_checkpoint(workdir, which="latest", ema=False)
  jax.tree.map(np.testing.assert_array_equal, raw_new, raw_old)
  # The combination, from Orbax's own reads of the three snapshots.
  import orbax.checkpoint as ocp
  folder = os.path.join(workdir, "checkpoints", "latest")
  emas = [ocp.StandardCheckpointer().restore(os.path.join(folder, str(s), "default"))[
      "ema_params"] for s in (16, 24, 32)]
  expected = jax.tree.map(lambda *e: sum(c * np.asarray(x, np.float64)
                                         for c, x in zip(info["coefficients"], e)), *emas)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params, expected)


def test_bad_requests_are_one_line_errors(smoke_reference, tmp_path):
  workdir, _ = smoke_reference
  with pytest.raises(ValueError, match=r"target_std must be in \(0, 0.288\)"):
    posthoc_ema.synthesize(workdir, 0.3)
  with pytest.raises(ValueError, match=r"no checkpoint at step 20 .* kept: \[16, 24, 32\]"):
    posthoc_ema.synthesize(workdir, 0.1, step=20)
  checkpoint.save_config(str(tmp_path), checkpoint.load_config(workdir))
  with pytest.raises(ValueError, match="holds 0 checkpoint.*checkpoint_every_steps"):
    posthoc_ema.synthesize(str(tmp_path), 0.1)
