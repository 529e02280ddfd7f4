"""A float32 model of bfloat16 rounding, to judge how much a network amplifies it.

`noisy_float32(fn)` runs the computation `fn` traces (in bfloat16) in float32 instead,
replacing every bfloat16 rounding by an independent draw of round-to-nearest's error at
that value: uniform in +-half a bfloat16 spacing of its binade. A rounding is each cast
to bfloat16 and each operation that computes a bfloat16 result, except those whose result
is one of their bfloat16 inputs' values (reshapes, slices, max, ReLU's select, ...) and
casts of values that are bfloat16 numbers already. The difference between such a run and
float32 is what independent roundings of bfloat16's size cost this network, through
every amplification it has; the real bfloat16 result is one more draw of the same kind.
"""
import math

import jax
from jax.extend import core
import jax.numpy as jnp

_SUB_JAXPR = ("jaxpr", "call_jaxpr", "fun_jaxpr")
# Primitives whose results are values of their inputs: exact in bfloat16.
_EXACT = frozenset((
    "reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice",
    "dynamic_slice", "dynamic_update_slice", "concatenate", "pad", "select_n", "max", "min",
    "reduce_max", "reduce_min", "neg", "abs", "gather", "copy", "copy_p", "rev", "sort",
    "clamp", "split"))


def rounding_error(x, uniform):
  """x plus bfloat16 round-to-nearest's error at x for `uniform` draws in [-1/2, 1/2)
  (bfloat16 keeps 8 significant bits: the spacing in [2^e, 2^(e+1)) is 2^(e-7); 2^e is
  x's exponent bits alone)."""
  binade = jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(x, jnp.uint32) & 0x7F800000, jnp.float32)
  return x + binade * 2.0**-7 * uniform


def _upcast(x):
  return jnp.asarray(x, jnp.float32) if getattr(x, "dtype", None) == jnp.bfloat16 else x


def _float32_params(params):
  return {k: (jnp.float32 if v == jnp.bfloat16 else v) for k, v in params.items()}


def _sub_jaxpr(eqn):
  sub = next((eqn.params[k] for k in _SUB_JAXPR if k in eqn.params), None)
  return sub if sub is None or hasattr(sub, "consts") else core.ClosedJaxpr(sub, ())


def _bfloat16_results(jaxpr):
  """How many bfloat16 values `jaxpr` computes: at most that many roundings."""
  count = 0
  for eqn in jaxpr.eqns:
    sub = _sub_jaxpr(eqn)
    if sub is not None:
      count += _bfloat16_results(sub.jaxpr)
    count += sum(v.aval.size for v in eqn.outvars if v.aval.dtype == jnp.bfloat16)
  return count


def _evaluate(jaxpr, consts, args, exact_args, noise):
  """jaxpr's outputs in float32 with rounding noise, and which of them are bfloat16
  numbers in the bfloat16 computation (`exact_args`: the same for `args`)."""
  env, exact = {}, {}
  read = lambda v: v.val if isinstance(v, core.Literal) else env[v]
  is_exact = lambda v: isinstance(v, core.Literal) or exact[v]
  for var, value in zip(jaxpr.constvars, consts):
    env[var], exact[var] = _upcast(value), value.dtype == jnp.bfloat16
  for var, value, flag in zip(jaxpr.invars, args, exact_args):
    env[var], exact[var] = _upcast(value), flag
  for eqn in jaxpr.eqns:
    inputs = [_upcast(read(v)) for v in eqn.invars]
    sub = _sub_jaxpr(eqn)
    if eqn.primitive.name == "convert_element_type":
      new = eqn.params["new_dtype"]
      outputs = [jnp.asarray(inputs[0]).astype(jnp.float32 if new == jnp.bfloat16 else new)]
      flags = [is_exact(eqn.invars[0]) or eqn.invars[0].aval.dtype == jnp.bfloat16]
    elif sub is not None:
      outputs, flags = _evaluate(sub.jaxpr, sub.consts, inputs,
                                 [is_exact(v) for v in eqn.invars], noise)
    else:
      outputs = eqn.primitive.bind(*inputs, **_float32_params(eqn.params))
      outputs = outputs if eqn.primitive.multiple_results else [outputs]
      moves = eqn.primitive.name in _EXACT and all(
          is_exact(v) for v in eqn.invars if jnp.issubdtype(v.aval.dtype, jnp.floating))
      flags = [moves] * len(outputs)
    for var, value, flag in zip(eqn.outvars, outputs, flags):
      if var.aval.dtype == jnp.bfloat16 and not flag:
        value, flag = rounding_error(value, noise(value.shape)), True
      env[var], exact[var] = value, flag
  return [read(v) for v in jaxpr.outvars], [is_exact(v) for v in jaxpr.outvars]


def noisy_float32(fn):
  """(key, *args) -> fn(*args) computed in float32 with rounding noise in place of each
  bfloat16 rounding, `key` drawing the noise; the outputs' pytree is fn's, float32."""
  def run(key, *args):
    closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    draws = jax.random.uniform(key, (_bfloat16_results(closed.jaxpr),), jnp.float32,
                               -0.5, 0.5)
    used = [0]

    def noise(shape):  # the next unused draws, one per rounded value
      start, used[0] = used[0], used[0] + math.prod(shape)
      return draws[start:used[0]].reshape(shape)

    leaves = jax.tree.leaves(args)
    flat, _ = _evaluate(closed.jaxpr, closed.consts, leaves, [False] * len(leaves), noise)
    return jax.tree.unflatten(jax.tree.structure(shape), flat)
  return jax.jit(run)
