"""What a run leaves a user: model.json from the start, model.keras at the end (also after
--resume), and tfinvconv-sample, which draws from a finished or interrupted run."""

import json
import os
import signal

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tfinvconv import sample
from tfinvconv.train import callbacks as cb
from tfinvconv.train import trainer
from tfinvconv.train.__main__ import parse

TINY = ["--depth", "1", "--hidden-channels", "8", "--num-samples", "4", "--epochs", "2",
        "--steps-per-epoch", "3", "--no-verbose"]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
  """A run stopped by SIGTERM at step 4 of 6 (through the real handler): its folder."""
  run_dir = str(tmp_path_factory.mktemp("sample") / "run")
  original = cb.RunControl.on_train_batch_end

  def interrupt_at_step_4(self, batch, logs=None):
    if cb.step_of(self.model) == 4:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, batch, logs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(cb.RunControl, "on_train_batch_end", interrupt_at_step_4)
    assert trainer.run(parse(TINY + ["--run-dir", run_dir])) == 128 + signal.SIGTERM
  return run_dir


def _png_shape(path):
  return tuple(tf.io.decode_png(tf.io.read_file(path)).shape)


@pytest.mark.slow  # the trainer end to end
def test_an_interrupted_run_can_be_sampled_and_its_resume_leaves_a_model_file(
    interrupted, tmp_path, capsys):
  with open(os.path.join(interrupted, "model.json")) as f:
    config = json.load(f)["glow"]
  assert (config["depth"], config["hidden_channels"], config["mixer"]) == (1, 8, "inverse_conv")
  assert not os.path.exists(os.path.join(interrupted, "model.keras"))  # not finished yet
  out = str(tmp_path / "grid.png")
  assert sample.main(["--run-dir", interrupted, "--n", "6", "--seed", "3", out]) == 0
  assert "ckpt-4" in capsys.readouterr().out
  # 6 digits of 8x8 enlarged 4x, in a grid with gaps: a grey image of that size.
  height, width, channels = _png_shape(out)
  assert channels == 1 and height >= 32 and width >= 2 * 32

  assert trainer.run(parse(TINY + ["--run-dir", interrupted, "--resume"])) == 0
  model = tf_keras.models.load_model(os.path.join(interrupted, "model.keras"))
  # model.keras holds the trained weights (the chief's checksum) and the recorded config.
  weights = sum(float(np.sum(np.asarray(v.numpy(), np.float64)))
                for v in model.trainable_variables)
  with open(os.path.join(interrupted, "ranks", "rank0.json")) as f:
    assert weights == pytest.approx(json.load(f)["weights_sum"], rel=1e-12)
  assert json.loads(json.dumps(model.get_config())) == config
  with open(os.path.join(interrupted, "metrics.json")) as f:
    assert json.load(f)["model"] == config
  # The checkpoint rebuilt from model.json (what tfinvconv-sample draws from) and model.keras
  # draw the same images; an untrained model of that config does not.
  flow, prefix = sample.load_flow(interrupted)
  assert prefix.endswith("ckpt-6")
  draw = lambda m: m.to_images(m.sample(6, temperature=0.7, seed=3)).numpy()
  np.testing.assert_array_equal(draw(flow), draw(model))
  untrained = type(model).from_config(config)
  untrained.initialize(draw(model).astype(np.uint8))
  assert np.any(draw(untrained) != draw(model))


def test_a_folder_that_cannot_be_sampled_is_a_one_line_error(tmp_path, capsys):
  out = str(tmp_path / "grid.png")
  cases = {str(tmp_path / "absent"): "no run folder",
           str(tmp_path): "has no model.json (tfinvconv-train writes it"}
  started = tmp_path / "started"  # a run that wrote its config, then died before a checkpoint
  started.mkdir()
  (started / "model.json").write_text(json.dumps({"glow": {"image_shape": [8, 8, 1]}}))
  cases[str(started)] = "no checkpoint in"
  for run_dir, said in cases.items():
    assert sample.main(["--run-dir", run_dir, out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and said in err and err.count("\n") == 1, err
  with pytest.raises(SystemExit):
    sample.main(["--run-dir", str(tmp_path), "--n", "0", out])
  assert "--n must be at least 1" in capsys.readouterr().err
