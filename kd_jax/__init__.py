"""kd_jax: knowledge distillation of image classifiers in JAX/Flax."""
