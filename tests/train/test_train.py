"""End-to-end runs of the training system (small models, real digits, a local image folder)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tfinvconv.models import backprop_modes
from tfinvconv.train import callbacks as cb
from tfinvconv.train import data
from tfinvconv.train import exits
from tfinvconv.train import trainer
from tfinvconv.train.__main__ import parse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--depth", "1", "--hidden-channels", "8", "--num-samples", "4"]


def _cli(args, timeout=300, env=None):
  return subprocess.run([sys.executable, "-m", "tfinvconv.train", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=env)


def _tiny_config(tmp_path, name, **overrides):
  config = parse(TINY + ["--run-dir", str(tmp_path / name), "--epochs", "2",
                         "--steps-per-epoch", "6", "--no-verbose"])
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def test_presets_carry_published_hyperparameters():
  cifar = parse(["--preset", "cifar10"])
  assert (cifar.num_levels, cifar.depth, cifar.hidden_channels, cifar.n_bits) == (3, 32, 512, 8)
  celeba = parse(["--preset", "celeba_hq", "--mixer", "finc", "--depth", "4"])
  assert (celeba.image_size, celeba.num_levels, celeba.n_bits, celeba.coupling) == (
      256, 6, 5, "additive")
  assert (celeba.mixer, celeba.depth) == ("finc", 4)  # flags override the preset
  # openai/glow's rate whatever the number of workers; scaling is an explicit choice.
  assert (cifar.learning_rate, cifar.scale_lr) == (1e-3, False)
  assert parse(["--preset", "cifar10", "--scale-lr"]).scale_lr is True


@pytest.mark.slow  # a trainer process
def test_digits_preset_end_to_end(tmp_path):
  result = _cli(TINY + ["--epochs", "4", "--run-dir", str(tmp_path / "run")])
  assert result.returncode == 0, result.stderr[-3000:]
  run = tmp_path / "run"
  metrics = json.loads((run / "metrics.json").read_text())
  for key in ("train_bits_per_dim", "test_bits_per_dim", "params", "step_time_ms",
              "images_per_sec", "baseline_bits_per_dim"):
    assert np.isfinite(metrics[key]), key
  assert metrics["steps"] == 4 * (data.DIGITS_TRAIN // 64)
  assert metrics["n_bins"] == 17  # the preset's: the digits' 17 levels
  assert metrics["baseline_bits_per_dim"] == pytest.approx(2.418, abs=0.002)
  # 92 steps of a depth-1 width-8 model (3.79 when calibrated; 4.24 after 46 steps): below the
  # uniform model's log2(17) = 4.09 (so it learned), above the per-pixel histogram (out of
  # reach this early: less would mean a wrong log-density; docs/quality.md).
  assert metrics["baseline_bits_per_dim"] < metrics["test_bits_per_dim"] < 4.09
  assert "per-pixel histogram baseline: 2.418" in result.stdout
  assert sorted(p.name for p in (run / "samples").glob("final_*.png")) == [
      "final_t0.0.png", "final_t0.5.png", "final_t0.7.png", "final_t1.0.png"]
  assert list((run / "tensorboard").glob("events.out.tfevents*"))
  assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith(f"ckpt-{metrics['steps']}")
  assert "samples:" in result.stdout and "metrics.json" in result.stdout


@pytest.mark.slow  # the trainer end to end
def test_digits_at_another_image_size(tmp_path):
  config = _tiny_config(tmp_path, "run", image_size=16, num_levels=3, epochs=1)
  assert trainer.run(config) == 0
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["steps"] == 6 and np.isfinite(metrics["test_bits_per_dim"])


@pytest.mark.slow  # the trainer end to end
def test_photo_patches_run_end_to_end(tmp_path):
  config = _tiny_config(tmp_path, "run", dataset=data.PHOTO_PATCHES, image_size=16, epochs=1,
                        steps_per_epoch=3, n_bins=0)
  assert trainer.run(config) == 0
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["n_bins"] == 256 and metrics["steps"] == 3
  assert 4.0 < metrics["baseline_bits_per_dim"] < 8.0  # natural images: far from uniform
  assert np.isfinite(metrics["test_bits_per_dim"])


@pytest.mark.slow  # the trainer end to end
def test_variational_dequantization_trains_saves_and_resumes(tmp_path):
  config = _tiny_config(tmp_path, "run", dequantization="variational", epochs=1,
                        steps_per_epoch=4)
  assert trainer.run(config) == 0
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["steps"] == 4 and np.isfinite(metrics["test_bits_per_dim"])
  config.epochs, config.resume = 2, True  # the dequantizer's weights are in the checkpoint
  assert trainer.run(config) == 0
  assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 8


def test_n_bits_alone_replaces_the_presets_n_bins():
  assert parse(["--n-bits", "5"]).n_bins == 0
  assert parse(["--n-bins", "17", "--n-bits", "8"]).n_bins == 17
  assert parse([]).n_bins == 17


@pytest.mark.slow  # the trainer end to end
def test_local_image_folder(tmp_path):
  folder = tmp_path / "images"
  train, _ = data.digits_images()
  for split, count in (("train", 40), ("test", 8)):
    (folder / split / "any_label").mkdir(parents=True)
    for i in range(count):
      rgb = np.repeat(np.repeat(np.repeat(train[i], 3, axis=-1), 2, axis=0), 2, axis=1)
      tf.io.write_file(str(folder / split / "any_label" / f"{i}.png"), tf.io.encode_png(rgb))
  config = _tiny_config(tmp_path, "run", dataset=str(folder), image_size=8, batch_size=8,
                        steps_per_epoch=0)
  assert trainer.run(config) == 0
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["steps"] == 2 * (40 // 8) and np.isfinite(metrics["test_bits_per_dim"])


def _weights(run_dir):
  return json.loads((run_dir / "ranks" / "rank0.json").read_text())


@pytest.mark.slow  # the trainer end to end
def test_resume_after_sigterm_matches_an_uninterrupted_run(tmp_path, monkeypatch):
  assert trainer.run(_tiny_config(tmp_path, "straight")) == 0

  original = cb.RunControl.on_train_batch_end

  def interrupt_at_step_8(self, batch, logs=None):
    if cb.step_of(self.model) == 8:
      os.kill(os.getpid(), signal.SIGTERM)  # arrives through the real handler
    return original(self, batch, logs)

  monkeypatch.setattr(cb.RunControl, "on_train_batch_end", interrupt_at_step_8)
  assert trainer.run(_tiny_config(tmp_path, "interrupted")) == 128 + signal.SIGTERM
  checkpoints = tmp_path / "interrupted" / "checkpoints"
  assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-8")
  monkeypatch.setattr(cb.RunControl, "on_train_batch_end", original)
  assert trainer.run(_tiny_config(tmp_path, "interrupted", resume=True)) == 0

  resumed = json.loads((tmp_path / "interrupted" / "metrics.json").read_text())
  straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
  assert resumed["steps"] == straight["steps"] == 12
  # Bit for bit: the CPU engine is deterministic, the data order and the dequantisation noise
  # are functions of the step, and the optimizer state is restored exactly.
  a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "interrupted")
  assert (b["weights_sum"], b["weights_sum_of_squares"]) == (
      a["weights_sum"], a["weights_sum_of_squares"])


@pytest.mark.slow  # the trainer end to end
def test_nonfinite_guard_skips_and_then_stops(tmp_path, monkeypatch, capsys):
  real_pipeline = data.pipeline

  def turns_nan_after_4_batches(images, batch_size, *args, training=True, **kwargs):
    stream = real_pipeline(images, batch_size, *args, training=training, **kwargs)
    if not training:
      return stream
    return stream.enumerate().map(
        lambda i, x: tf.where(i >= 4, np.nan, tf.cast(x, tf.float32)))

  monkeypatch.setattr(data, "pipeline", turns_nan_after_4_batches)
  config = _tiny_config(tmp_path, "run", max_nonfinite=3, checkpoint_every=1, epochs=5)
  assert trainer.run(config) == exits.EXIT_NONFINITE
  assert "consecutive steps had a non-finite loss" in capsys.readouterr().err
  latest = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
  reader = tf.train.load_checkpoint(latest)
  names = [n for n in reader.get_variable_to_shape_map() if "OPTIMIZER_SLOT" not in n]
  values = [np.asarray(reader.get_tensor(n)) for n in names]
  floats = [v for v in values if v.dtype.kind == "f"]
  assert floats and all(np.all(np.isfinite(v)) for v in floats)
  assert any(n.startswith("counters/nonfinite_steps") for n in names)


def test_a_single_nonfinite_step_is_skipped_and_counted(tmp_path):
  from tfinvconv.models import Glow  # pylint: disable=g-import-not-at-top
  from tfinvconv.guarded_training import GuardedTraining  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  model = Glow((8, 8, 1), num_levels=2, depth=1, hidden_channels=8, mixer="1x1")
  guarded = GuardedTraining(model)
  guarded.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
  assert guarded.optimizer is model.optimizer
  train, _ = data.digits_images()
  images = train[:64].astype(np.float32)
  model.initialize(images)
  bad = images.copy()
  bad[3, 2, 2, 0] = np.nan
  before = [v.numpy().copy() for v in model.trainable_variables]
  guarded.fit(bad, batch_size=64, epochs=1, verbose=0)
  assert int(guarded.counters.nonfinite_steps.numpy()) == 1
  for old, variable in zip(before, model.trainable_variables):
    np.testing.assert_array_equal(variable.numpy(), old)  # the step was skipped
  guarded.fit(images, batch_size=64, epochs=1, verbose=0)
  assert int(guarded.counters.nonfinite_steps.numpy()) == 1
  assert int(guarded.counters.step_counter.numpy()) == 2
  assert int(model.optimizer.iterations.numpy()) == 1  # only the finite step was applied
  # The plain model has no guard: the same NaN batch goes into its weights.
  model.fit(bad, batch_size=64, epochs=1, verbose=0)
  assert not all(np.all(np.isfinite(v.numpy())) for v in model.trainable_variables)


def _main(capsys, args, tmp_path):
  """The command line's main() in this process, its run folder under tmp_path: its exit code
  (argparse's errors exit with 2; bad values and data return 2 after one `error: ...` line) and
  what it wrote to stderr. An exception other than those fails the test here (the traceback a
  process would print)."""
  from tfinvconv.train.__main__ import main  # pylint: disable=g-import-not-at-top
  capsys.readouterr()
  try:
    code = main(args + ["--run-dir", str(tmp_path / "r")])
  except SystemExit as exit_:
    code = exit_.code
  return code, capsys.readouterr().err


def test_bad_configuration_is_a_one_line_error(tmp_path, capsys):
  code, error = _main(capsys, ["--mixer", "lu"], tmp_path)
  assert code == 2 and "invalid choice: 'lu'" in error
  code, error = _main(capsys, ["--image-size", "12", "--num-levels", "3"], tmp_path)
  assert code == 2
  assert "not divisible by 2**num_levels = 8" in error
  assert "Traceback" not in error


def test_missing_tfds_dataset_says_how_to_get_it(tmp_path, capsys):
  start = time.time()
  code, error = _main(capsys, ["--preset", "cifar10", "--data-dir", str(tmp_path / "tfds"),
                               "--depth", "1"], tmp_path)
  assert time.time() - start < 100  # no 200-second network retry
  assert code == 2
  assert "'cifar10' is not prepared" in error
  assert "download_and_prepare" in error and "--data-dir" in error
  code, error = _main(capsys, ["--preset", "celeba_hq", "--data-dir", str(tmp_path / "tfds")],
                      tmp_path)
  assert code == 2 and "manual download" in error
  code, error = _main(capsys, ["--dataset", "folder:" + str(tmp_path / "nothing")], tmp_path)
  assert code == 2 and "no such image folder" in error


def _tree(folder):
  """{relative path: (size, mtime)} of every file below folder."""
  return {os.path.relpath(os.path.join(d, f), folder): (os.path.getsize(os.path.join(d, f)),
                                                        os.path.getmtime(os.path.join(d, f)))
          for d, _, files in os.walk(folder) for f in files}


@pytest.mark.slow  # the trainer end to end
def test_a_used_run_folder_is_refused_untouched_unless_resume_or_overwrite(tmp_path, capsys):
  from tfinvconv.train.__main__ import main  # pylint: disable=g-import-not-at-top
  args = TINY + ["--run-dir", str(tmp_path / "run"), "--epochs", "2", "--steps-per-epoch", "3",
                 "--no-verbose"]
  assert main(args) == 0
  before = _tree(tmp_path / "run")
  assert main(args) == 2
  error = capsys.readouterr().err.strip().splitlines()
  assert len(error) == 1 and "already holds checkpoints" in error[0]
  assert "--resume" in error[0] and "--overwrite" in error[0] and "--run-dir" in error[0]
  assert _tree(tmp_path / "run") == before  # nothing touched
  # --overwrite starts over: a 2-step run leaves only its own checkpoint.
  assert main(args[:-5] + ["--epochs", "1", "--steps-per-epoch", "2", "--no-verbose",
                           "--overwrite"]) == 0
  checkpoints = tf.train.get_checkpoint_state(str(tmp_path / "run" / "checkpoints"))
  assert [os.path.basename(p) for p in checkpoints.all_model_checkpoint_paths] == ["ckpt-2"]
  assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 2


BAD_VALUES = [
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--epochs", "-3"], "--epochs must be a positive integer"),
    (["--learning-rate", "-1"], "--learning-rate must be a positive number"),
    (["--learning-rate", "nan"], "--learning-rate must be a positive number"),
    (["--seed", "-1"], "--seed must be in 0..4294967295"),
    (["--n-bits", "9"], "--n-bits/--n-bins: n_bits must be an integer in 1..8"),
    (["--n-bins", "300"], "--n-bits/--n-bins: n_bins must be an integer in 2..256"),
    (["--n-bits", "5", "--n-bins", "17"], "n_bits=5 and n_bins=17 disagree"),
    (["--dataset", "/nonexistent/images"], "no such image folder: /nonexistent/images"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict"),
    (["--cpu-replicas", "0"], "--cpu-replicas must be a positive integer"),
    (["--cpu-replicas", "2"], "--cpu-replicas splits the CPU for --strategy mirrored only"),
]


def test_bad_command_line_values_are_one_line_errors(tmp_path, capsys):
  from tfinvconv.train.__main__ import main  # pylint: disable=g-import-not-at-top
  for args, message in BAD_VALUES:
    assert main(args + ["--run-dir", str(tmp_path / "r")]) == 2, args
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0], (args,
                                                                                        error)
  assert not os.path.exists(tmp_path / "r")  # refused before anything was written


def test_an_elastic_run_refuses_what_changes_with_its_workers():
  """Under Horovod elastic the number of workers changes mid-run: a learning rate scaled by it,
  or epochs counted in steps, would silently mean something else after a change."""
  from tfinvconv.train import distributed  # pylint: disable=g-import-not-at-top
  elastic = types.SimpleNamespace(elastic=True)
  for flag, message in (("scale_lr", "--scale-lr multiplies by the number of workers"),
                        ("steps_per_epoch", "--steps-per-epoch: an elastic run's epochs")):
    config = parse([])
    setattr(config, flag, 8 if flag == "steps_per_epoch" else True)
    with pytest.raises(ValueError, match=message):
      config.check_engine(elastic)
    config.check_engine(distributed.Engine())


@pytest.mark.slow  # the trainer end to end
def test_mixed_precision_flag_is_honoured(tmp_path, capsys):
  assert parse([]).mixed_precision == "none"
  with pytest.raises(SystemExit):
    parse(["--mixed-precision", "fp8"])
  assert "--mixed-precision: invalid choice: 'fp8'" in capsys.readouterr().err
  before = tf_keras.mixed_precision.global_policy().name
  config = _tiny_config(tmp_path, "run", mixed_precision="float16", epochs=1, steps_per_epoch=3)
  assert trainer.run(config) == 0
  assert tf_keras.mixed_precision.global_policy().name == before  # restored after the run
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  # Read from the model and its optimizer, not the flag: float16 networks, loss scaling on.
  assert metrics["coupling_compute_dtype"] == "float16" and metrics["loss_scale"] > 0
  assert metrics["nonfinite_steps"] == 0 and np.isfinite(metrics["test_bits_per_dim"])
  bf16 = parse(TINY + ["--mixed-precision", "bfloat16", "--run-dir", str(tmp_path / "b"),
                       "--epochs", "1", "--steps-per-epoch", "2", "--no-verbose"])
  assert trainer.run(bf16) == 0
  metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
  assert metrics["coupling_compute_dtype"] == "bfloat16" and metrics["loss_scale"] is None
  bf16.resume, bf16.mixed_precision, bf16.epochs = True, "float16", 2  # no scale was saved
  with pytest.raises(ValueError, match="saved without float16 loss scaling; resume it with"):
    trainer.run(bf16)
  bad = _tiny_config(tmp_path, "bad", mixed_precision="half")
  with pytest.raises(ValueError, match="--mixed-precision must be one of none, bfloat16, "
                                       "float16, got 'half'"):
    trainer.run(bad)


def test_large_seeds_are_valid():
  from tfinvconv.train import distributed  # pylint: disable=g-import-not-at-top
  config = parse(["--seed", "5000000"])
  config.validate()
  engine = distributed.Engine()
  engine.rank = 1
  seeds = {distributed.seed_for(engine, seed) for seed in (5000000, 2 ** 32 - 1, 0)}
  assert len(seeds) == 3 and all(0 <= s < 2 ** 32 for s in seeds)


@pytest.mark.slow  # a trainer process
def test_a_second_signal_exits_at_once():
  script = ("import os, signal, time\n"
            "from tfinvconv.train import callbacks\n"
            "with callbacks.SignalFlag() as flag:\n"
            "  os.kill(os.getpid(), signal.SIGINT)\n"
            "  time.sleep(0.5)\n"
            "  assert flag.signum == signal.SIGINT, flag.signum\n"
            "  print('first signal recorded', flush=True)\n"
            "  os.kill(os.getpid(), signal.SIGTERM)\n"
            "  time.sleep(30)\n"
            "print('not reached')\n")
  start = time.time()
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
  assert "first signal recorded" in result.stdout and "not reached" not in result.stdout
  assert "second signal (SIGTERM): exiting now" in result.stderr
  assert time.time() - start < 25


# Every real preset, end to end through the TFDS code path (decode, resize, shard, batch),
# offline: tfds.testing.mock_data stands in for the files with images of the right features.
@pytest.mark.slow  # the trainer end to end
@pytest.mark.parametrize("preset", ["cifar10", "imagenet32", "imagenet64", "celeba_hq"])
def test_real_presets_run_under_tfds_mock_data(preset, tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = parse(["--preset", preset, "--depth", "1", "--hidden-channels", "4",
                  "--num-samples", "2", "--epochs", "1", "--steps-per-epoch", "2",
                  "--batch-size", "2", "--data-dir", str(tmp_path / "tfds"),
                  "--run-dir", str(tmp_path / "run"), "--no-verbose"])
  with tfds.testing.mock_data(num_examples=4):
    assert trainer.run(config) == 0
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["steps"] == 2 and np.isfinite(metrics["test_bits_per_dim"])
  grid = tf.io.decode_png(tf.io.read_file(str(tmp_path / "run" / "samples" / "final_t0.7.png")))
  assert grid.shape[-1] == 3 and grid.shape[0] >= config.image_size


def test_tfds_images_are_resized_like_folder_images(tmp_path):
  """Both paths round the area resize (TFDS used to truncate: a bias of half a level)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=4):
    raw = next(iter(tfds.load("cifar10", split="train", data_dir=str(tmp_path))))["image"]
    resized = next(iter(data.load_split("cifar10", "train", 16, 3, str(tmp_path)).images()))
  want = np.clip(np.round(tf.image.resize(raw, [16, 16], method="area").numpy()), 0, 255)
  np.testing.assert_array_equal(resized.numpy(), want.astype(np.uint8))


def test_resume_skips_consumed_records_without_decoding_them():
  """A resumed run's input starts exactly where it stopped, and the batches it skips are never
  decoded (an ImageNet run resumed late would otherwise spend hours re-decoding)."""
  decoded = tf.Variable(0, dtype=tf.int64)

  def decode(record):
    decoded.assign_add(1)
    return tf.fill([2, 2, 1], tf.cast(record % 251, tf.uint8))

  source = data.ImageSource(tf.data.Dataset.range(700), decode)
  straight = list(data.pipeline(source, 4, seed=3).take(502).as_numpy_iterator())
  decoded.assign(0)
  resumed = iter(data.pipeline(source, 4, seed=3, skip_batches=500))
  np.testing.assert_array_equal(next(resumed).numpy(), straight[500])
  np.testing.assert_array_equal(next(resumed).numpy(), straight[501])
  assert decoded.numpy() < 500  # 2,000 records skipped; only the prefetched ones decoded
  with pytest.raises(ValueError, match="training stream"):
    data.pipeline(source, 4, training=False, skip_batches=1)


def test_folder_split_holds_out_every_class(tmp_path):
  for label in ("a_cats", "b_dogs"):
    (tmp_path / label).mkdir()
    for i in range(20):
      tf.io.write_file(str(tmp_path / label / f"{i:02d}.png"),
                       tf.io.encode_png(np.full((4, 4, 3), i, np.uint8)))
  test, train = data.folder_files(str(tmp_path), "test"), data.folder_files(str(tmp_path), "train")
  assert {os.path.basename(os.path.dirname(f)) for f in test} == {"a_cats", "b_dogs"}
  assert len(test) == 4 and len(train) == 36 and not set(test) & set(train)


@pytest.mark.slow  # the trainer end to end
def test_resume_falls_back_from_a_damaged_checkpoint(tmp_path, capsys):
  from tfinvconv.train.__main__ import main  # pylint: disable=g-import-not-at-top
  args = TINY + ["--run-dir", str(tmp_path / "run"), "--steps-per-epoch", "3",
                 "--checkpoint-every", "2", "--no-verbose"]
  assert main(args + ["--epochs", "2"]) == 0
  checkpoints = tmp_path / "run" / "checkpoints"
  assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-6")
  data_file = next(checkpoints.glob("ckpt-6.data-*"))
  data_file.write_bytes(data_file.read_bytes()[:len(data_file.read_bytes()) // 2])  # torn write
  capsys.readouterr()
  assert main(args + ["--epochs", "3", "--resume", "--verbose"]) == 0
  captured = capsys.readouterr()
  assert "checkpoint" in captured.err and "ckpt-6 is unreadable" in captured.err
  assert "falling back to" in captured.err and "ckpt-4" in captured.err
  assert "resumed from" in captured.out and "ckpt-4 at step 4" in captured.out
  assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 9
  # Every checkpoint damaged: a clear error, not a silent fresh start.
  for path in checkpoints.glob("ckpt-*.data-*"):
    path.write_bytes(b"garbage")
  assert main(args + ["--epochs", "4", "--resume"]) == 2
  assert "no readable checkpoint" in capsys.readouterr().err


def test_a_dataset_without_preset_gets_its_own_settings_and_says_so(tmp_path, capsys):
  """A folder of photos never inherits the digits' 17 grey levels, width or epochs."""
  folder = parse(["--dataset", str(tmp_path)])
  assert (folder.n_bins, folder.n_bits, folder.image_size) == (0, 8, 32)
  assert "without --preset: using preset 'images' (256 grey levels, 32x32" in (
      capsys.readouterr().out)
  cifar = parse(["--dataset", "cifar10"])
  assert (cifar.depth, cifar.hidden_channels, cifar.n_bins) == (32, 512, 0)
  assert "using preset 'cifar10'" in capsys.readouterr().out
  assert parse([]).n_bins == 17 and capsys.readouterr().out == ""  # the digits, silently
  assert parse(["--dataset", str(tmp_path), "--preset", "digits"]).n_bins == 17
  with pytest.raises(SystemExit):
    parse(["--preset", "images"])
  assert "--preset images needs --dataset" in capsys.readouterr().err


@pytest.mark.slow  # the trainer end to end, twice
def test_reversible_backprop_reports_its_rebuild_and_stops_when_it_goes_bad(tmp_path, capsys,
                                                                           monkeypatch):
  config = _tiny_config(tmp_path, "run", backprop="reversible", epochs=2, steps_per_epoch=3,
                        verbose=True)
  assert trainer.run(config) == 0
  said = capsys.readouterr().out
  # Before training and after each of the 2 epochs.
  reports = re.findall(r"reversible backprop: worst rebuilt step input off by (\S+) ", said)
  assert len(reports) == 3 and all(0 < float(r) < 1e-4 for r in reports), said[-3000:]
  assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 6

  monkeypatch.setattr(backprop_modes, "REBUILD_TOLERANCE", 0.0)  # every rebuild is now "bad"
  config = _tiny_config(tmp_path, "bad", backprop="reversible", verbose=True)
  assert trainer.run(config) == exits.EXIT_REBUILD
  error = capsys.readouterr().err
  assert "error: stopped at step 0: reversible backprop rebuilds the input of flow step" in error
  assert "--backprop checkpointed" in error
  assert not list((tmp_path / "bad" / "checkpoints").glob("ckpt-*.index"))
