"""The benchmarks take the trainer's data, presets and training step instead of copies of their
own: they measure the step `fit` runs, on the data and settings `python -m tfinvconv.train`
uses."""

import glob
import os
import re

import numpy as np
import pytest

from benchmarks import bench_models
from benchmarks import quality
from benchmarks.tfp_glow import TfpGlow
from tfinvconv.models import Glow
from tfinvconv.train import data
from tfinvconv.train import presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
  with open(path) as f:
    return f.read()


SOURCES = {os.path.basename(p): _read(p)
           for p in glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))}
# The training steps benchmarks/ may write itself, and why: tfp's Glow is a bijector with no
# train_step of its own (TfpGlow.train_step), bench_ops times an op's backward pass, no step.
OWN_STEPS = {"GradientTape": {"tfp_glow.py", "bench_ops.py"},
             "apply_gradients": {"tfp_glow.py"}}
# quality.json's setting names and the preset values they take.
PRESET_KEYS = dict(image_size="image_size", levels="num_levels", depth="depth",
                   hidden="hidden_channels", batch="batch_size", learning_rate="learning_rate")
# What quality.py changes of each preset, on purpose (its comments say how and why).
QUALITY_OVERRIDES = {"digits": {"steps"}, "photo_patches": {"depth", "hidden", "steps", "warmup"}}


def test_no_benchmark_loads_data_itself():
  for name, source in SOURCES.items():
    assert not re.search(r"sklearn|load_digits|load_sample_images", source), (
        f"benchmarks/{name} loads data itself: take tfinvconv.train.data's loaders")


@pytest.mark.parametrize("call", sorted(OWN_STEPS))
def test_no_benchmark_writes_its_own_training_step(call):
  writers = {name for name, source in SOURCES.items() if call in source}
  assert writers <= OWN_STEPS[call], (
      f"{sorted(writers - OWN_STEPS[call])} use {call}: run the model's own train_step "
      "(benchmarks.compiled_train_step) instead of a copy")


@pytest.mark.parametrize("dataset", sorted(QUALITY_OVERRIDES))
def test_quality_settings_are_the_presets_but_for_named_overrides(dataset):
  setting, preset = quality.SETTINGS[dataset], presets.PRESETS[dataset]
  steps_per_epoch = data.load_split(dataset, "train", preset["image_size"],
                                    data.image_channels(dataset)).count() // preset["batch_size"]
  expected = {key: preset[name] for key, name in PRESET_KEYS.items()}
  expected["n_bins"] = preset.get("n_bins") or 2 ** preset["n_bits"]
  expected["steps"] = preset["epochs"] * steps_per_epoch
  expected["warmup"] = round(preset["warmup_epochs"] * steps_per_epoch)
  assert set(setting) == set(expected)
  differ = {key for key in expected if setting[key] != expected[key]}
  assert differ <= QUALITY_OVERRIDES[dataset], {k: (setting[k], expected[k]) for k in differ}


def _traced_steps(monkeypatch, cls):
  """Counts the traces of `cls.train_step`: the compiled step is the model's own."""
  traced = []
  original = cls.train_step

  def spy(self, batch):
    traced.append(type(self).__name__)
    return original(self, batch)

  monkeypatch.setattr(cls, "train_step", spy)
  return traced


def test_bench_models_times_glows_own_train_step(monkeypatch):
  traced = _traced_steps(monkeypatch, Glow)
  model = Glow((8, 8, 3), 2, 1, 8, mixer="1x1", seed=0)
  step = bench_models.make_callables(model, 4)["train_step"]
  assert np.isfinite(step().numpy()) and np.isfinite(step().numpy())
  assert set(traced) == {"Glow"} and int(model.optimizer.iterations) == 2


@pytest.mark.parametrize("name", ["1x1", "tfp_glow"])
def test_quality_trains_with_the_models_own_train_step(monkeypatch, name):
  traced = _traced_steps(monkeypatch, TfpGlow if name == "tfp_glow" else Glow)
  setting = dict(quality.SETTINGS["digits"], **dict(quality.QUICK, steps=3))
  train = quality.source_of("digits", "train", 8)
  test = quality.images_of("digits", "test", 8)[:64]
  model = quality.build(name, (8, 8, 1), setting, 8, seed=0)
  run = quality.train_and_measure(model, train, test, setting, seed=0)
  assert traced and int(model.optimizer.iterations) == 3
  assert run["diverged_at_step"] is None and np.isfinite(run["last_train_bits_per_dim"])
