"""kd_jax.losses: pure distillation losses for any JAX project (METHODS.md section 1).

No Flax, no config, no collectives; float32 inside; teacher arguments never carry
gradient. Keyword defaults are the papers' CIFAR-100 values.
"""
from kd_jax.losses.consistency import batch_consistency, class_consistency
from kd_jax.losses.cosine import (batch_correlation_distance, class_correlation_distance,
                                  cskd, cswt_temperatures)
from kd_jax.losses.feature import class_means, class_sums, nd, nd_to_centers
from kd_jax.losses.feature_kd import at, nst, pkt, rkd, sp
from kd_jax.losses.logit import (dist, dkd, hard_distillation, kd, kd_instance_temperature,
                                 logit_standardize, soft_target_cross_entropy)
from kd_jax.losses.review import hcl
from kd_jax.losses.roi import roi_dkd, roi_kd, roi_nd
from kd_jax.losses.ofd import ofd, ofd_margin
from kd_jax.losses.svd import kdsvd
from kd_jax.losses.vid import vid

__all__ = [
    "kd", "kd_instance_temperature", "dkd", "cskd", "cswt_temperatures", "class_correlation_distance",
    "batch_correlation_distance", "nd", "class_means", "class_sums", "dist",
    "logit_standardize", "at", "nst", "sp", "pkt", "rkd", "hcl", "vid", "kdsvd", "ofd",
    "ofd_margin", "class_consistency", "batch_consistency", "nd_to_centers", "hard_distillation",
    "soft_target_cross_entropy", "roi_nd", "roi_kd", "roi_dkd",
]
