"""Datasets (local CIFAR folders, TFDS, synthetic), on-device augmentation and mixing,
batch order."""
from kd_jax.data import augment
from kd_jax.data import batching
from kd_jax.data import mixing
from kd_jax.data import randaugment
from kd_jax.data.augment import normalize, random_crop_flip
from kd_jax.data.batching import epoch_permutation, eval_batches, steps_per_epoch
from kd_jax.data.cifar import DATASETS, SOURCES, Dataset, load

__all__ = ['augment', 'batching', 'mixing', 'normalize', 'random_crop_flip', 'epoch_permutation',
           'eval_batches', 'steps_per_epoch', 'DATASETS', 'SOURCES', 'Dataset', 'load']
