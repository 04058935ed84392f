"""Training presets: plain data, every value overridable from the command line.

Hyperparameters of the real datasets follow openai/glow's README commands (levels, depth,
coupling, n_bits, learning rate 1e-3, learn_top) and its train.py defaults (hidden width 512,
10 warm-up epochs, batch 64 per GPU at 32x32 scaled by (32 / image size)^2: 16 at 64x64, 1 at
256x256). Truong et al. and Inverse-Flow train the same Glow architecture with their
convolution as the mixer.

`digits` is a small model for scikit-learn's bundled 8x8 digits that trains in a few minutes on
2 CPU cores. The digits have 17 grey levels (0..16), so the data is reduced to n_bins = 17: every
bin holds data. With n_bits = 8 (256 bins) 239 bins per value are empty, and a continuous flow
pays for the density it spreads over them (up to log2(256/17) = 3.9 bits/dim; 0.9 with 5 bits):
measured, 6.0 bits/dim at 8 bits and 3.0 at 5 bits against 2.30 at 17 bins (docs/quality.md).
40 epochs: the test bits/dim flattens at 30-60 epochs and rises after (1,500 training images
are memorised). `photo_patches` is the same model on 16x16 crops of scikit-learn's two photos.
`images` is for a folder of images (or any other dataset): 8-bit data (256 bins), 32x32, and a
Glow of moderate size; a run that names no preset gets the preset of its --dataset
(`preset_for`), never the digits' settings.
"""

# What every preset shares unless it says otherwise (openai/glow's optimiser and kernel).
_COMMON = dict(coupling="affine", n_bits=8, batch_size=64, learning_rate=1e-3,
               steps_per_epoch=None, kernel_size=3)
# openai/glow's runs: 1000 epochs after a 10-epoch warm-up.
_GLOW = dict(_COMMON, warmup_epochs=10, epochs=1000, hidden_channels=512)

PRESETS = {
    "digits": dict(_COMMON, dataset="digits", image_size=8, num_levels=2, depth=8,
                   hidden_channels=128, n_bins=17, warmup_epochs=1, epochs=40),
    "photo_patches": dict(_COMMON, dataset="photo_patches", image_size=16, num_levels=2, depth=8,
                          hidden_channels=128, n_bins=0, warmup_epochs=1, epochs=10),
    "cifar10": dict(_GLOW, dataset="cifar10", image_size=32, num_levels=3, depth=32),
    "imagenet32": dict(_GLOW, dataset="downsampled_imagenet/32x32", image_size=32, num_levels=3,
                       depth=48),
    "imagenet64": dict(_GLOW, dataset="downsampled_imagenet/64x64", image_size=64, num_levels=4,
                       depth=48, batch_size=16),
    "celeba_hq": dict(_GLOW, dataset="celeb_a_hq/256", image_size=256, num_levels=6, depth=32,
                      coupling="additive", n_bits=5, batch_size=1),
}
PRESETS["images"] = dict(_COMMON, dataset="", image_size=32, num_levels=3, depth=16,
                         hidden_channels=256, n_bins=0, warmup_epochs=1, epochs=100)


def preset_for(dataset):
  """The preset of a --dataset given without --preset: the one made for it, else `images`."""
  if dataset is None:
    return "digits"
  for name, preset in PRESETS.items():
    if preset["dataset"] == dataset:
      return name
  return "images"


def describe(name):
  """A preset's settings in one line, as a run that inherited them says."""
  preset = PRESETS[name]
  bins = preset.get("n_bins") or 2 ** preset["n_bits"]
  return (f"{bins} grey levels, {preset['image_size']}x{preset['image_size']}, "
          f"{preset['num_levels']} levels of depth {preset['depth']}, width "
          f"{preset['hidden_channels']}, batch {preset['batch_size']}, {preset['epochs']} epochs")
