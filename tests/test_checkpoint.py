"""checkpoint.py's config files: older workdirs and the user's own `configs`."""

import json
import sys
import types

from configs import base
from jaxddpm import checkpoint


def _older_workdir(tmp_path):
  """A workdir whose config.json predates the `eval` section and two sampling fields."""
  saved = json.loads(base.get_config().to_json_best_effort())
  del saved["eval"], saved["sampling"]["guide_workdir"], saved["sampling"]["spacing"]
  saved["sampling"]["guidance_scale"] = 3.5
  (tmp_path / "config.json").write_text(json.dumps(saved))
  return str(tmp_path)


def test_an_older_config_gets_the_fields_it_lacks_from_the_base_config(tmp_path):
  config = checkpoint.load_config(_older_workdir(tmp_path))
  assert config.sampling.guidance_scale == 3.5  # Saved values stay.
  assert config.eval.to_dict() == base.get_config().eval.to_dict()
  assert config.sampling.guide_workdir == "" and config.sampling.spacing == "uniform"


def test_a_users_own_configs_package_does_not_change_the_defaults(tmp_path, monkeypatch):
  """A script run from a project with its own `configs/base.py` once got that one."""
  theirs = types.ModuleType("configs")
  theirs.base = types.SimpleNamespace(get_config=lambda: {"lr": 1})
  monkeypatch.setitem(sys.modules, "configs", theirs)
  monkeypatch.setitem(sys.modules, "configs.base", theirs.base)
  config = checkpoint.load_config(_older_workdir(tmp_path))
  assert config.eval.num_samples == 10_000 and config.sampling.guidance_scale == 3.5
