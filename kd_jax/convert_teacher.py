"""Converts a PyTorch teacher checkpoint (.pth) into a kd_jax teacher checkpoint.

  python -m kd_jax.convert_teacher --pth resnet32x4_vanilla/ckpt_epoch_240.pth \\
      --model resnet32x4 --num_classes 100 --out teachers/resnet32x4

Reads the file without torch (kd_jax.torch_checkpoint), checks every key and shape
against the kd_jax model, then writes it with kd_jax.checkpoint.save_teacher so training
runs load it with load_teacher. A user mistake prints one line and exits with status 2.
"""
import argparse
import sys

from kd_jax.errors import UserError


def _parse(argv):
  parser = argparse.ArgumentParser(
      prog='python -m kd_jax.convert_teacher',
      description='Convert a PyTorch (mdistiller/CRD/torchvision) teacher to kd_jax.')
  parser.add_argument('--pth', required=True,
                      help='PyTorch checkpoint (.pth/.pt) or timm .safetensors file')
  parser.add_argument('--model', required=True, help='kd_jax model name, e.g. resnet32x4')
  parser.add_argument('--num_classes', type=int, default=100,
                      help='classes of the teacher (default 100)')
  parser.add_argument('--out', required=True, help='directory for the kd_jax teacher')
  return parser.parse_args(argv)


def convert(pth, model_name, num_classes, out):
  """Loads `pth` into kd_jax model `model_name` and saves it as a teacher under `out`."""
  # Imported here so `--help` and argument errors answer without loading JAX.
  from kd_jax import checkpoint
  from kd_jax import torch_checkpoint

  model = torch_checkpoint.load_torch_teacher(pth, model_name, num_classes)
  checkpoint.save_teacher(model, out, model_name=model_name, num_classes=num_classes)


def main(argv=None):
  """Command-line entry point; returns the exit status."""
  args = _parse(argv)
  try:
    convert(args.pth, args.model, args.num_classes, args.out)
  except UserError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(f'saved {args.model} teacher ({args.num_classes} classes) to {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
