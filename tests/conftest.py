"""Test session set-up: 8 simulated CPU devices, so sharding tests can compare 1 vs 8.

Set before JAX initialises its backends; single-device tests just use device 0.
"""
import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")
