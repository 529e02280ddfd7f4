"""Distillation methods: name -> dataclass, built from `config.method` (see base.py).

Every method with a teacher also exists with ND added (METHODS.md 12) as `<name>_nd`
(kd_jax.methods.nd.with_nd); kd_nd, dkd_nd, dist_nd, reviewkd_nd are the published ++
versions, deit_nd is DeiT++. ND_REFUSED says why the others are not.
"""
import dataclasses

from kd_jax.errors import UserError
from kd_jax.methods.base import Aux, Method, ModelOutput, Setup, cross_entropy
from kd_jax.methods.ce import CrossEntropy
from kd_jax.methods.crd import CRD
from kd_jax.methods.cskd import CSKD
from kd_jax.methods.cskd_mv import CSKDMultiView
from kd_jax.methods.ctkd import CTKD
from kd_jax.methods.deit import DeiT, DeiTND
from kd_jax.methods.det_dkd import DetDKD
from kd_jax.methods.det_kd_nd import DetKDND
from kd_jax.methods.det_reviewkd import DetReviewKD
from kd_jax.methods.det_reviewkd_nd import DetReviewKDND
from kd_jax.methods.detector import Detector
from kd_jax.methods.dist import DIST
from kd_jax.methods.dkd import DKD
from kd_jax.methods.kd import KD
from kd_jax.methods.kdsvd import KDSVD
from kd_jax.methods.mlkd import MLKD
from kd_jax.methods.nd import CSKDND, DKDND, KDND, with_nd
from kd_jax.methods.at import AT
from kd_jax.methods.fitnet import FitNet
from kd_jax.methods.nst import NST
from kd_jax.methods.pkt import PKT
from kd_jax.methods.rkd import RKD
from kd_jax.methods.sp import SP
from kd_jax.methods.reviewkd import ReviewKD, ReviewKDND
from kd_jax.methods.ofd import OFD
from kd_jax.methods.vid import VID

METHODS: dict[str, type[Method]] = {
    "ce": CrossEntropy,
    "kd": KD,
    "dkd": DKD,
    "dist": DIST,
    "cskd": CSKD,
    "cskd_mv": CSKDMultiView,
    "mlkd": MLKD,
    "kd_nd": KDND,
    "dkd_nd": DKDND,
    "cskd_nd": CSKDND,
    "fitnet": FitNet,
    "at": AT,
    "nst": NST,
    "sp": SP,
    "pkt": PKT,
    "rkd": RKD,
    "crd": CRD,
    "reviewkd": ReviewKD,
    "reviewkd_nd": ReviewKDND,
    "vid": VID,
    "kdsvd": KDSVD,
    "ofd": OFD,
    "ctkd": CTKD,
    "deit": DeiT,
    "deit_nd": DeiTND,
    "detector": Detector,
    "det_kd_nd": DetKDND,
    "det_reviewkd": DetReviewKD,
    "det_reviewkd_nd": DetReviewKDND,
    "det_dkd": DetDKD,
}
# Bases ND cannot be added to, with the reason (a one-line config error).
ND_REFUSED = {
    "ce": "cross-entropy alone has no teacher, so ND has no teacher embedding or class means",
    "detector": "the detector alone has no teacher; ND on detection is configs/coco_kd.py",
}
METHODS.update({f"{name}_nd": with_nd(cls) for name, cls in list(METHODS.items())
                if not name.endswith("_nd") and f"{name}_nd" not in METHODS
                and name not in ND_REFUSED and cls.task == "classification"})
TEACHER_TRAINING = "ce"  # what a teacher bootstrapped for a smoke run trains with


def defaults(name, **overrides) -> dict:
  """`config.method` for method `name`: every field at its dataclass default, then
  `overrides` (a recipe's settings). Configs start here, so config.json lists every
  field a run used, and a misspelt field fails when the config is built."""
  check_not_refused(name)
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
  fields = {f.name: f.default for f in dataclasses.fields(METHODS[name])}
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f"{', '.join(unknown)}: not a field of method {name!r}; valid: "
                     f"{', '.join(fields) or 'none'}")
  return {"name": name, **fields, **overrides}


def check_not_refused(name):
  """`<base>_nd` for a base of ND_REFUSED: a one-line UserError saying why."""
  base = name[:-len("_nd")] if isinstance(name, str) and name.endswith("_nd") else None
  if base in ND_REFUSED:
    raise UserError(f"method {name!r}: ND cannot be added to {base!r}: {ND_REFUSED[base]}")


def create(method_config) -> Method:
  """Builds the method named `method_config.name` from the config's other fields.

  Unknown names and fields are user errors, caught before any compilation.
  """
  settings = dict(method_config)
  name = settings.pop("name", None)
  check_not_refused(name)
  if name not in METHODS:
    raise UserError(f"unknown method {name!r} (config.method.name); valid: {', '.join(METHODS)}")
  cls = METHODS[name]
  fields = {f.name: f for f in dataclasses.fields(cls)}
  for key, value in settings.items():
    if key not in fields:
      raise UserError(f"config.method.{key} is not a field of method {name!r}; "
                      f"valid: {', '.join(fields) or 'none'}")
    expected = type(fields[key].default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
      raise UserError(f"config.method.{key}={value!r} should be a {expected.__name__}")
    settings[key] = value
  return cls(**settings)


__all__ = ["METHODS", "ND_REFUSED", "Aux", "Method", "ModelOutput", "Setup", "create", "cross_entropy",
           "defaults"]
