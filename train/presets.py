"""Training presets: plain data, every value overridable from the command line.

Hyperparameters of the real datasets follow openai/glow's README commands (levels, depth,
coupling, n_bits, learning rate 1e-3, learn_top) and its train.py defaults (hidden width 512,
10 warm-up epochs, batch 64 per GPU at 32x32 scaled by (32 / image size)^2: 16 at 64x64, 1 at
256x256). Truong et al. and Inverse-Flow train the same Glow architecture with their
convolution as the mixer. `digits` is a small model for scikit-learn's bundled 8x8 digits that
trains in minutes on 2 CPU cores.
"""

PRESETS = {
    "digits": dict(dataset="digits", image_size=8, num_levels=2, depth=8, hidden_channels=128,
                   coupling="affine", n_bits=8, batch_size=64, learning_rate=1e-3,
                   warmup_epochs=1, epochs=20, steps_per_epoch=None, kernel_size=3),
    "cifar10": dict(dataset="cifar10", image_size=32, num_levels=3, depth=32,
                    hidden_channels=512, coupling="affine", n_bits=8, batch_size=64,
                    learning_rate=1e-3, warmup_epochs=10, epochs=1000, steps_per_epoch=None,
                    kernel_size=3),
    "imagenet32": dict(dataset="downsampled_imagenet/32x32", image_size=32, num_levels=3,
                       depth=48, hidden_channels=512, coupling="affine", n_bits=8,
                       batch_size=64, learning_rate=1e-3, warmup_epochs=10, epochs=1000,
                       steps_per_epoch=None, kernel_size=3),
    "imagenet64": dict(dataset="downsampled_imagenet/64x64", image_size=64, num_levels=4,
                       depth=48, hidden_channels=512, coupling="affine", n_bits=8,
                       batch_size=16, learning_rate=1e-3, warmup_epochs=10, epochs=1000,
                       steps_per_epoch=None, kernel_size=3),
    "celeba_hq": dict(dataset="celeb_a_hq/256", image_size=256, num_levels=6, depth=32,
                      hidden_channels=512, coupling="additive", n_bits=5, batch_size=1,
                      learning_rate=1e-3, warmup_epochs=10, epochs=1000, steps_per_epoch=None,
                      kernel_size=3),
}
