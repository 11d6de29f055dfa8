"""Pictures: each is produced, decodable and not blank; the guidance sweep is the
per-scale sampler from the same noise, in one call."""

import jax
import numpy as np
import pytest
from PIL import Image

from jaxddpm import images, pictures, sampling, schedules, train


@pytest.fixture(scope="module")
def tiny_model():
  from configs import base
  c = base.get_config()
  c.data.update(image_size=8, num_classes=4)
  c.model.update(base_channels=8, channel_mults=(1,), num_res_blocks=1,
                 attention_resolutions=(), num_heads=1, dropout=0.0)
  c.diffusion.num_timesteps = 100
  c.sampling.steps = 6
  model, *_ = train.make_steps(c)
  params = jax.device_get(train.init_params(model, c, jax.random.key(0)))
  # Away from the init, whose zero output layer predicts 0 whatever the label: then
  # every guidance scale would give the same images and a sweep could ignore them.
  rng = np.random.default_rng(0)
  return c, jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape, np.float32), params)


def _not_blank(img):
  assert img.dtype == np.uint8 and img.std() > 5


def test_forward_strip_goes_from_data_to_noise():
  schedule = schedules.cosine(100)
  x = np.zeros((2, 8, 8, 1), np.uint8)
  x[:, 2:6, 2:6] = 255
  strip = pictures.forward_strip(schedule, x, [0, 50, 99], jax.random.key(0))
  assert strip.shape == (2 * 8 + 3 * 2, 3 * 8 + 4 * 2, 1)  # grid(): 2 px padding.
  _not_blank(strip)
  first, last = strip[2:10, 2:10, 0], strip[2:10, 22:30, 0]
  assert abs(first.astype(int) - x[0, ..., 0]).max() <= 30  # t=0: almost the image.
  assert np.corrcoef(last.ravel(), x[0].ravel())[0, 1] < 0.5  # t=T-1: mostly noise.
  with pytest.raises(ValueError, match="timesteps"):
    pictures.forward_strip(schedule, x, [100], jax.random.key(0))


def test_reverse_strip_and_gif(tiny_model, tmp_path):
  config, params = tiny_model
  x_t, x0, ts = pictures.reverse_frames(config, params, [0, 3], jax.random.key(1), num_frames=4)
  assert x_t.shape == (4, 2, 8, 8, 1) and x0.shape == x_t.shape and ts[-1] == -1
  strip = pictures.reverse_strip(x_t, x0)
  assert strip.shape[0] == 4 * 8 + 5 * 2  # x_t and x0 rows for two labels.
  _not_blank(strip)
  path = pictures.reverse_gif(str(tmp_path / "r.gif"), x_t, x0)
  with Image.open(path) as gif:
    assert gif.format == "GIF" and gif.n_frames >= 4
    gif.seek(1)
    _not_blank(np.asarray(gif.convert("L")))


def test_guidance_sweep_is_per_scale_sampling_from_the_same_noise(tiny_model):
  config, params = tiny_model
  key, labels, scales = jax.random.key(2), np.array([0, 1, 2]), (0.0, 1.0, 4.0)
  sweep = pictures.guidance_sweep(config, params, labels, key, scales)
  assert sweep.shape == (3, 3, 8, 8, 1)
  for s, got in zip(scales, sweep):
    want = sampling.make_sampler(config, guidance_scale=s)(params, key, labels)
    np.testing.assert_allclose(got, np.asarray(want), atol=2e-4)
  # The scales matter for this model: a sweep that ignored them would fail above.
  assert min(np.abs(sweep[i] - sweep[j]).max() for i, j in ((0, 1), (1, 2), (0, 2))) > 0.05
  plain = pictures.guidance_grid(sweep, scales)
  _not_blank(plain)
  # Scales that applied only in an interval say so: a caption row above them.
  captioned = pictures.guidance_grid(sweep, scales, (0.28, 5.42))
  assert captioned.shape[0] > plain.shape[0]
  np.testing.assert_array_equal(captioned[-plain.shape[0]:, :plain.shape[1]], plain)
  with pytest.raises(ValueError, match=">= 0"):
    pictures.guidance_sweep(config, params, labels, key, (1.0, -1.0))
  with pytest.raises(ValueError, match="labels"):
    pictures.guidance_sweep(config, params, [7], key, (1.0,))


def test_training_curves(tmp_path):
  records = [dict(step=s, loss=1.0 / s, lr=1e-3 * min(1, s / 20), grad_norm=1.0)
             for s in range(10, 200, 10)]
  records += [dict(step=100, epoch=1, val_loss=0.02), dict(step=190, epoch=2, val_loss=0.015),
              dict(step=190, eval_frechet_distance=12.0, eval_conditional_accuracy=0.9),
              dict(step=200, loss=None)]  # A non-finite loss, as strict JSON logs it.
  img = pictures.training_curves(records)
  _not_blank(img)
  path = images.write_png(str(tmp_path / "c.png"), img)
  assert images.read_png(path).shape == img.shape
  with pytest.raises(ValueError, match="no training records"):
    pictures.training_curves([])
