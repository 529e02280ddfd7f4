"""Downloads the published teachers, checks each one, and puts them where the configs look.

  python -m kd_jax.tools.fetch_teachers cifar100   # mdistiller's cifar_teachers.tar
  python -m kd_jax.tools.fetch_teachers imagenet   # torchvision ResNet-34 / ResNet-50, timm
      [--root=download_ckpts] [--url=URL] [--from_file=PATH]   # ViT-S/16, ViT-B/16, RegNetY-16GF
  python -m kd_jax.tools.fetch_teachers coco       # detectron2 R101/R50-FPN 3x, ImageNet R18/50/101

cifar100 unpacks to ROOT/cifar_teachers/<model>_vanilla/ckpt_epoch_240.pth
(configs/cifar_common.py TEACHER_PATH); imagenet puts ROOT/imagenet_teachers/<file>
(configs/imagenet_common.py TEACHER_PATHS); coco puts ROOT/detection/<file> (configs/coco_kd.py
TEACHER_WEIGHTS, configs/coco_det.py BACKBONES: each must load into its kd_jax detector by
detectron2 name). Every teacher must load with kd_jax's reader
and hold the parameter count of its kd_jax model (tests/test_models.py); files whose names
carry a sha256 prefix (torchvision's, DeiT's RegNetY) must also match it. Work
happens beside the destination and is renamed into place only when all of it checks
out, so a failure leaves nothing where the configs look: at most ROOT/<file>.part, which
the next run resumes with an HTTP Range request. Any failure prints one line, exit 2.
"""
import argparse
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

from kd_jax.errors import UserError

CIFAR_URL = ("https://github.com/megvii-research/mdistiller/releases/download/checkpoints/"
             "cifar_teachers.tar")  # the link in mdistiller's README
IMAGENET_URL = "https://download.pytorch.org/models/"
# Where a CIFAR teacher sits below ROOT; the configs' TEACHER_PATH with ROOT=download_ckpts.
CIFAR_MEMBER = "cifar_teachers/{model}_vanilla/ckpt_epoch_240.pth"
# CIFAR-100 teacher -> parameter count (METHODS.md section 7).
CIFAR_TEACHERS = {"resnet56": 861_620, "resnet110": 1_736_564, "resnet32x4": 7_433_860,
                  "wrn_40_2": 2_255_156, "vgg13": 9_462_180, "ResNet50": 23_705_252}
# torchvision file (its name carries the first 8 hex digits of its sha256) -> (model, count).
IMAGENET_TEACHERS = {"resnet34-b627a593.pth": ("imagenet_resnet34", 21_797_672),
                     "resnet50-0676ba61.pth": ("imagenet_resnet50", 25_557_032)}
# timm teachers of the ND paper's transformer experiments: file -> (model, count, URL).
# The ViTs are what ND's ImageNet/ViT/train_*.py get from timm 0.6.12 with pretrained=True
# (the augreg in21k->in1k weights; timm now serves them from the Hugging Face hub, in
# .safetensors); RegNetY-16GF is DeiT's teacher, the file ND's DeiT/README command names.
_HF = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
TIMM_TEACHERS = {
    "vit_small_patch16_224.augreg_in21k_ft_in1k.safetensors": (
        "vit_small_patch16_224", 22_050_664,
        _HF.format("vit_small_patch16_224.augreg_in21k_ft_in1k")),
    "vit_base_patch16_224.augreg_in21k_ft_in1k.safetensors": (
        "vit_base_patch16_224", 86_567_656,
        _HF.format("vit_base_patch16_224.augreg_in21k_ft_in1k")),
    "regnety_160-a5fe301d.pth": (
        "regnety_160", 83_590_140, "https://dl.fbaipublicfiles.com/deit/regnety_160-a5fe301d.pth"),
}
# COCO detection (METHODS.md 13): detectron2's model-zoo teachers (configs/coco_kd.py) and
# the ImageNet weights its students start from (configs/coco_det.py): file -> (the kd_jax
# detector it must load into, URL). The ND MobileNetV2's weights have no stable URL.
_D2 = "https://dl.fbaipublicfiles.com/detectron2/"
COCO_FILES = {
    "model_final_f6e8b1.pkl": ("faster_rcnn_R101_FPN", _D2 + "COCO-Detection/"
                               "faster_rcnn_R_101_FPN_3x/137851257/model_final_f6e8b1.pkl"),
    "model_final_280758.pkl": ("faster_rcnn_R50_FPN", _D2 + "COCO-Detection/"
                               "faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl"),
    "R-50.pkl": ("faster_rcnn_R50_FPN", _D2 + "ImageNetPretrained/MSRA/R-50.pkl"),
    "R-101.pkl": ("faster_rcnn_R101_FPN", _D2 + "ImageNetPretrained/MSRA/R-101.pkl"),
    "resnet18-f37072fd.pth": ("faster_rcnn_R18_FPN", IMAGENET_URL + "resnet18-f37072fd.pth"),
}
TIMEOUT_S = 60  # per socket operation, not for the whole download


class _Progress:
  """Bytes, % and MB/s: one updating line on a terminal, a line every 10 s otherwise."""

  def __init__(self, name, done, total):
    self.name, self.done, self.total, self.first = name, done, total, done
    self.start = self.last = time.monotonic()
    self.tty = sys.stdout.isatty()

  def update(self, count, final=False):
    self.done += count
    now = time.monotonic()
    if not final and now - self.last < (0.5 if self.tty else 10):
      return
    self.last = now
    size = f"{self.done / 1e6:.1f} MB"
    if self.total:
      size += f" of {self.total / 1e6:.1f} MB ({100 * self.done / self.total:.0f}%)"
    rate = (self.done - self.first) / max(now - self.start, 1e-6) / 1e6
    line = f"{self.name}: {size} at {rate:.1f} MB/s"
    print("\r" + line if self.tty else line, end="" if self.tty and not final else "\n",
          flush=True)


def _expected_size(url, response, done):
  """The file's full size, or None; a 206 must continue exactly where the .part ends."""
  if response.status == 206:
    found = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
    if not found or int(found[1]) != done:
      raise UserError(f"{url} resumed at the wrong place "
                      f"(Content-Range {response.headers.get('Content-Range')!r})")
    return int(found[2])
  length = response.headers.get("Content-Length")
  return int(length) if length and length.isdigit() else None


def download(url, dest):
  """Fetches `url` to `dest` through `dest.part`, resuming a partial one where possible."""
  part = dest + ".part"
  done = os.path.getsize(part) if os.path.isfile(part) else 0
  request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
  try:
    response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
  except urllib.error.HTTPError as error:
    error.close()
    if error.code == 416 and done:  # The .part is whole or stale: start over.
      os.remove(part)
      return download(url, dest)
    raise UserError(f"{url} answered HTTP {error.code} {error.reason}") from None
  except (OSError, http.client.HTTPException, ValueError) as error:
    raise UserError(f"cannot download {url}: {getattr(error, 'reason', error)}") from None
  with response:
    if done and response.status != 206:
      done = 0  # The server ignores Range: start again from the first byte.
    try:
      total = _expected_size(url, response, done)
    except UserError:
      os.remove(part)
      raise
    print(f"downloading {url}" + (f" (resuming at byte {done:,})" if done else ""), flush=True)
    progress, broken = _Progress(os.path.basename(dest), done, total), None
    with open(part, "ab" if done else "wb") as out:
      try:
        while chunk := response.read(1 << 20):
          out.write(chunk)
          progress.update(len(chunk))
      except (OSError, http.client.HTTPException) as error:
        broken = error
    progress.update(0, final=True)
  size = os.path.getsize(part)
  if broken or (total is not None and size != total):
    of = f" of {total:,}" if total else ""
    raise UserError(f"the download of {url} stopped at byte {size:,}{of} "
                    f"({broken or 'connection closed'}); run the same command again to resume")
  os.replace(part, dest)
  return dest


def check_teacher(path, model_name, num_classes, expected_params, shown=None):
  """Loads `path` with kd_jax's reader and compares its parameter count with the table."""
  import jax  # Imported here so download errors and --help answer without loading JAX.
  from flax import nnx
  from kd_jax import torch_checkpoint
  try:
    model = torch_checkpoint.load_torch_teacher(path, model_name, num_classes)
  except UserError as error:  # Name the file as the user will see it, not the staging copy.
    raise UserError(str(error).replace(path, shown or path)) from None
  count = sum(int(leaf.size) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
  if count != expected_params:
    raise UserError(f"{shown or path} holds {count:,} parameters as {model_name}, "
                    f"expected {expected_params:,}")


def _check_cifar(base):
  for model, count in CIFAR_TEACHERS.items():
    member = CIFAR_MEMBER.format(model=model)
    if not os.path.isfile(os.path.join(base, member)):
      raise UserError(f"{member} is missing")
    check_teacher(os.path.join(base, member), model, 100, count, shown=member)


def _extract(tar_path, dest):
  """Extracts regular files and folders only: absolute paths, `..` and links are refused."""
  name = os.path.basename(tar_path)
  try:
    archive = tarfile.open(tar_path)
  except tarfile.TarError:
    raise UserError(f"{name} is not a tar archive (a corrupt or different file)") from None
  try:
    with archive:
      for member in archive:
        parts = member.name.split("/")
        if os.path.isabs(member.name) or ".." in parts or not (member.isfile() or member.isdir()):
          raise UserError(f"refusing {name}: its member {member.name!r} is not a plain file "
                          "or folder inside the archive")
        target = os.path.join(dest, *parts)
        os.makedirs(target if member.isdir() else os.path.dirname(target), exist_ok=True)
        if member.isfile():
          with archive.extractfile(member) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)
  except (tarfile.TarError, EOFError) as error:
    raise UserError(f"{name} is not a complete tar archive ({error})") from None


def fetch_cifar(url, root, from_file=None):
  """Installs mdistiller's CIFAR-100 teachers as ROOT/cifar_teachers, all or nothing."""
  final = os.path.join(root, "cifar_teachers")
  if os.path.exists(final):
    try:
      _check_cifar(root)
    except UserError as error:
      raise UserError(f"{final} exists but {error}: remove {final} and run again") from None
    return f"{final} already holds the {len(CIFAR_TEACHERS)} teachers; all check out"
  os.makedirs(root, exist_ok=True)
  tar_path = from_file or download(url, os.path.join(root, "cifar_teachers.tar"))
  staging = tempfile.mkdtemp(prefix=".cifar_teachers-", dir=root)
  try:
    _extract(tar_path, staging)
    _check_cifar(staging)
    os.rename(os.path.join(staging, "cifar_teachers"), final)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    if not from_file:
      os.remove(tar_path)  # A complete download: kept only as the extracted teachers.
  return f"installed {len(CIFAR_TEACHERS)} CIFAR-100 teachers in {final}, each checked"


def _check_sha256_prefix(path, name, shown):
  """Files whose names carry a sha256 prefix (torchvision's, DeiT's) must match it."""
  hashed = re.search(r"-([0-9a-f]{8,})\.", name)
  if hashed:
    with open(path, "rb") as file:
      digest = hashlib.file_digest(file, "sha256").hexdigest()
    if not digest.startswith(hashed[1]):
      raise UserError(f"{shown} has sha256 {digest[:8]}..., its name says {hashed[1]}: "
                      "a corrupt or different file")


def _check_imagenet(path, name, model, count, shown):
  _check_sha256_prefix(path, name, shown)
  check_teacher(path, model, 1000, count, shown=shown)


def check_detection_weights(path, name, model, shown):
  """The file loads by detectron2 name into an (abstract) kd_jax detector `model` of COCO's
  80 classes: a whole detector, or its bottom-up network (kd_jax.detection.faster_rcnn)."""
  _check_sha256_prefix(path, name, shown)
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import models  # pylint: disable=g-import-not-at-top
  from kd_jax.detection import faster_rcnn  # pylint: disable=g-import-not-at-top
  detector = nnx.eval_shape(lambda: models.create(model, 80, rngs=nnx.Rngs(0)))
  try:
    faster_rcnn.load_weights(detector, path)
  except UserError as error:
    raise UserError(str(error).replace(path, shown)) from None


def fetch_coco(base_url, root, from_dir=None):
  """Installs the detection teachers and ImageNet weights in ROOT/detection, each checked;
  a --url is a folder holding all of them."""
  files = [(name, (model,), url if base_url is None else base_url.rstrip("/") + "/" + name)
           for name, (model, url) in COCO_FILES.items()]
  return _install(files, os.path.join(root, "detection"), root, from_dir,
                  check_detection_weights, "COCO detection teachers and ImageNet weights")


def imagenet_files(base_url):
  """(file, model, count, url) of every ImageNet teacher; a --url other than torchvision's
  is a folder holding all of them."""
  for name, (model, count) in IMAGENET_TEACHERS.items():
    yield name, model, count, base_url.rstrip("/") + "/" + name
  for name, (model, count, url) in TIMM_TEACHERS.items():
    if base_url != IMAGENET_URL:
      url = base_url.rstrip("/") + "/" + name
    yield name, model, count, url


def fetch_imagenet(base_url, root, from_dir=None):
  """Installs the ImageNet teachers in ROOT/imagenet_teachers, each checked first."""
  files = [(name, (model, count), url) for name, model, count, url in imagenet_files(base_url)]
  return _install(files, os.path.join(root, "imagenet_teachers"), root, from_dir,
                  _check_imagenet, "ImageNet teachers")


def _install(files, folder, root, from_dir, check, what):
  """Each (name, check arguments, url) of `files` into `folder`: checked in place when
  there, else fetched (or copied from `from_dir`) beside it, checked, renamed in."""
  for name, facts, url in files:
    final = os.path.join(folder, name)
    if os.path.exists(final):
      try:
        check(final, name, *facts, final)
      except UserError as error:
        raise UserError(f"{error}: remove {final} and run again") from None
      continue
    staging = os.path.join(root, name)
    os.makedirs(root, exist_ok=True)
    try:
      if from_dir:
        shutil.copyfile(os.path.join(from_dir, name), staging)
      else:
        download(url, staging)
      check(staging, name, *facts, name)
      os.makedirs(folder, exist_ok=True)
      os.replace(staging, final)
    finally:
      if os.path.exists(staging):
        os.remove(staging)
  return f"{folder} holds the {len(files)} {what}, each checked"


def main(argv=None):
  """Command-line entry point; returns the exit status."""
  parser = argparse.ArgumentParser(prog="python -m kd_jax.tools.fetch_teachers",
                                   description="Fetch and check the published teachers.")
  parser.add_argument("dataset", choices=("cifar100", "imagenet", "coco"))
  parser.add_argument("--root", default="download_ckpts", help="where the configs look")
  parser.add_argument("--url", help="the tar (cifar100) or the folder of the .pth files "
                      "(imagenet) to download instead of the published one")
  parser.add_argument("--from_file", help="no download: install from this cifar_teachers.tar "
                      "(cifar100) or folder holding the .pth files (imagenet)")
  args = parser.parse_args(argv)
  cifar = args.dataset == "cifar100"
  url = args.url or (CIFAR_URL if cifar else IMAGENET_URL)
  try:
    if cifar:
      message = fetch_cifar(url, args.root, args.from_file)
    elif args.dataset == "coco":
      message = fetch_coco(args.url, args.root, args.from_file)
    else:
      message = fetch_imagenet(url, args.root, args.from_file)
  except (UserError, OSError, http.client.HTTPException, ValueError) as error:
    if args.dataset == "coco":
      files = " and ".join(url for _, url in COCO_FILES.values())
      manual = (f"download {files} by hand into {args.root}/detection/ "
                "(or pass --from_file=FOLDER)")
    elif cifar:
      manual = (f"download {url} by hand and run `tar xf cifar_teachers.tar -C {args.root}` "
                "(or pass --from_file=cifar_teachers.tar)")
    else:
      files = " and ".join(file_url for *_, file_url in imagenet_files(url))
      manual = (f"download {files} by hand into {args.root}/imagenet_teachers/ "
                "(or pass --from_file=FOLDER)")
    print(f"error: {error}; to install by hand, {manual}".replace("\n", " "), file=sys.stderr)
    return 2
  print(message)
  return 0


if __name__ == "__main__":
  sys.exit(main())
