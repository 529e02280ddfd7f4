"""Vision Transformers (ViT, DeiT) in timm's layout, so timm checkpoints load by name.

State paths mirror timm's `VisionTransformer` / `VisionTransformerDistilled` state dicts:
`cls_token`, `dist_token` (distilled DeiT only), `pos_embed`, `patch_embed.proj`,
`blocks.{i}.norm1`, `blocks.{i}.attn.qkv`, `blocks.{i}.attn.proj`, `blocks.{i}.norm2`,
`blocks.{i}.mlp.fc1`, `blocks.{i}.mlp.fc2`, `norm`, `head` (and `head_dist`). Pre-norm
blocks, LayerNorm eps 1e-6, exact (erf) GELU, class token concatenated before the position
embedding is added (timm's default `no_embed_class=False`), no dropout (timm's default).
Stochastic depth (`drop_path_rate`, DeiT's recipe uses 0.1) as timm's DropPath: in training,
each residual branch of each sample is dropped with rate linspace(0, drop_path_rate,
depth)[block] and kept branches scaled by 1/(1 - rate); 0 (the default) builds nothing.

Outputs follow the zoo's `(logits, features)` contract:
  * features['pooled']: the embedding ND uses, the final-norm class token (timm's
    `forward_head(pre_logits=True)` for `global_pool='token'`); for distilled DeiT the
    mean of the class and distillation tokens, as the ND authors' DeiT code
    (ImageNet/DeiT/Models/deit.py `forward_head`) and timm's pre_logits.
  * features['tokens']: the final-norm token sequence [B, prefix + patches, D].
  * features['stages'] / ['preact_stages']: empty; a ViT has no spatial stages, so methods
    that distil feature maps cannot use one.
  * distilled DeiT: logits = (head(cls) + head_dist(dist)) / 2 in train and eval mode,
    what timm returns unless `set_distilled_training(True)` is on in training, and what DeiT
    evaluates; the two heads' own logits are features['cls_logits'] and
    features['dist_logits'], for a method that trains them separately.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.errors import UserError
from kd_jax.models import layers

LAYER_NORM_EPS = 1e-6  # timm's ViT LayerNorm
TRUNC_NORMAL_02 = nnx.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0)


def layer_norm(dim, *, dtype, rngs):
  """nn.LayerNorm(dim, eps=1e-6) with float32 params; weight/bias <-> scale/bias."""
  return nnx.LayerNorm(dim, epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=jnp.float32,
                       rngs=rngs)


def _linear(in_features, out_features, *, dtype, rngs):
  """timm's ViT Linear init: truncated normal std 0.02 (timm's +-2 absolute cut-off is
  100 std here, so practically untruncated, as in timm), zero bias."""
  return layers.linear(in_features, out_features, kernel_init=TRUNC_NORMAL_02,
                       bias_init=layers.ZEROS, dtype=dtype, rngs=rngs)


class PatchEmbed(nnx.Module):
  """Non-overlapping patches through a strided conv (`patch_embed.proj`), flattened."""

  def __init__(self, img_size, patch_size, dim, *, dtype, rngs):
    self.num_patches = (img_size // patch_size) ** 2
    fan_in = 3 * patch_size * patch_size
    self.proj = nnx.Conv(3, dim, (patch_size, patch_size), strides=(patch_size, patch_size),
                         padding='VALID', kernel_init=layers.TORCH_DEFAULT,
                         bias_init=layers.torch_default_bias(fan_in), dtype=dtype,
                         param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x):
    x = self.proj(x)
    return x.reshape(x.shape[0], -1, x.shape[-1])  # row-major patches = torch's flatten(2)


class Attention(nnx.Module):
  """Multi-head self-attention with a fused `qkv` Linear, softmax in float32."""

  def __init__(self, dim, num_heads, *, dtype, rngs):
    self.num_heads = num_heads
    self.qkv = _linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.proj = _linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    batch, tokens, dim = x.shape
    head_dim = dim // self.num_heads
    # timm: qkv.reshape(B, N, 3, heads, head_dim): q, k, v blocks, then heads within each.
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    scores = jnp.einsum('bqhd,bkhd->bhqk', q * head_dim**-0.5, k)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, tokens, dim)
    return self.proj(out)


class Mlp(nnx.Module):
  """fc1 - GELU (exact) - fc2."""

  def __init__(self, dim, hidden, *, dtype, rngs):
    self.fc1 = _linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = _linear(hidden, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each branch
  through drop-path when `drop_path` > 0."""

  def __init__(self, dim, num_heads, mlp_ratio, *, drop_path=0.0, dtype, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.norm1 = layer_norm(dim, **kw)
    self.attn = Attention(dim, num_heads, **kw)
    self.norm2 = layer_norm(dim, **kw)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)
    # Per-sample masks (broadcast over tokens and channels), scaled by 1/keep: timm DropPath.
    self.drop_path = (nnx.Dropout(drop_path, broadcast_dims=(1, 2), rngs=rngs)
                      if drop_path > 0 else None)

  def _branch(self, y, train):
    return y if self.drop_path is None else self.drop_path(y, deterministic=not train)

  def __call__(self, x, train=False):
    x = x + self._branch(self.attn(self.norm1(x)), train)
    return x + self._branch(self.mlp(self.norm2(x)), train)


class VisionTransformer(nnx.Module):
  """timm's VisionTransformer (global_pool='token'), optionally with DeiT's distillation
  token and head (`distilled=True`, timm's VisionTransformerDistilled)."""

  def __init__(self, num_classes, *, img_size=224, patch_size=16, dim=768, depth=12,
               num_heads=12, mlp_ratio=4.0, distilled=False, drop_path_rate=0.0,
               dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.dtype = dtype
    self.img_size = img_size
    self.distilled = distilled
    self.patch_embed = PatchEmbed(img_size, patch_size, dim, **kw)
    prefix = 2 if distilled else 1
    self.cls_token = nnx.Param(1e-6 * jax.random.normal(rngs.params(), (1, 1, dim)))
    if distilled:
      self.dist_token = nnx.Param(TRUNC_NORMAL_02(rngs.params(), (1, 1, dim)))
    self.pos_embed = nnx.Param(
        TRUNC_NORMAL_02(rngs.params(), (1, self.patch_embed.num_patches + prefix, dim)))
    rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # torch.linspace
    self.blocks = nnx.List([Block(dim, num_heads, mlp_ratio, drop_path=rate, **kw)
                            for rate in rates])
    self.norm = layer_norm(dim, **kw)
    self.head = _linear(dim, num_classes, **kw)
    if distilled:
      self.head_dist = _linear(dim, num_classes, **kw)

  def __call__(self, x, train):
    if x.shape[1:3] != (self.img_size, self.img_size):
      raise UserError(f'this ViT takes {self.img_size}x{self.img_size} images, got '
                      f'{x.shape[1]}x{x.shape[2]} (its position embedding is fixed): set '
                      f'config.data.image_size={self.img_size}')
    x = self.patch_embed(x.astype(self.dtype))
    batch = x.shape[0]
    prefix = [self.cls_token] + ([self.dist_token] if self.distilled else [])
    prefix = [jnp.broadcast_to(t[...].astype(x.dtype), (batch, 1, x.shape[-1])) for t in prefix]
    x = jnp.concatenate([*prefix, x], axis=1) + self.pos_embed[...].astype(x.dtype)
    for block in self.blocks:  # without drop-path, train and eval compute the same
      x = block(x, train)
    tokens = self.norm(x)
    features = {'tokens': tokens, 'stages': (), 'preact_stages': ()}
    if not self.distilled:
      pooled = tokens[:, 0]
      return self.head(pooled), {'pooled': pooled, **features}
    cls_logits, dist_logits = self.head(tokens[:, 0]), self.head_dist(tokens[:, 1])
    pooled = (tokens[:, 0] + tokens[:, 1]) / 2
    return (cls_logits + dist_logits) / 2, {'pooled': pooled, 'cls_logits': cls_logits,
                                            'dist_logits': dist_logits, **features}


def _factory(**arch):
  def make(num_classes, *, rngs, dtype=jnp.float32, drop_path_rate=0.0):
    return VisionTransformer(num_classes, dtype=dtype, rngs=rngs, drop_path_rate=drop_path_rate,
                             **arch)
  make.has_drop_path = True
  return make


_TINY = dict(dim=192, depth=12, num_heads=3)
_SMALL = dict(dim=384, depth=12, num_heads=6)
_BASE = dict(dim=768, depth=12, num_heads=12)
# timm model name -> (constructor, pooled dim). ViT-S/16 and DeiT-S share one architecture
# (as ViT-B/16 and DeiT-B do); both names are kept so configs say which weights they mean.
MODELS = {
    'vit_small_patch16_224': (_factory(**_SMALL), 384),
    'vit_base_patch16_224': (_factory(**_BASE), 768),
    'deit_tiny_patch16_224': (_factory(**_TINY), 192),
    'deit_small_patch16_224': (_factory(**_SMALL), 384),
    'deit_base_patch16_224': (_factory(**_BASE), 768),
    'deit_tiny_distilled_patch16_224': (_factory(distilled=True, **_TINY), 192),
    'deit_small_distilled_patch16_224': (_factory(distilled=True, **_SMALL), 384),
    'deit_base_distilled_patch16_224': (_factory(distilled=True, **_BASE), 768),
    # Not published models: 2-block ViTs on 64x64 images for smoke runs and tests.
    'vit_micro_patch16_64': (_factory(img_size=64, dim=64, depth=2, num_heads=2), 64),
    'deit_micro_distilled_patch16_64': (
        _factory(img_size=64, dim=64, depth=2, num_heads=2, distilled=True), 64),
}
