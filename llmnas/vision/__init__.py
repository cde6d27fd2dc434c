"""Vision cells trained for real: NAS-Bench-201's network, image data and the training loop.

- :mod:`llmnas.vision.ops`: the five cell operations and the residual reduction block;
- :mod:`llmnas.vision.network`: the macro skeleton, fixed cells and the ResNet baseline;
- :mod:`llmnas.vision.data`: image data sets decoded once into cached uint8 tensors, NAS-Bench-201's
  split, augmentation in torch;
- :mod:`llmnas.vision.train`: Accelerate-native training and evaluation of a cell network.
"""
