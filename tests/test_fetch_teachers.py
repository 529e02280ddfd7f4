"""kd_jax.tools.fetch_teachers end to end against a local HTTP server.

The tool's teacher tables are swapped for tiny teachers (resnet8, resnet20) written with
torch, so no real weights are needed; the real tables are checked against the model zoo's counts.
"""
import hashlib
import http.server
import io
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest

from configs import cifar_common
from kd_jax.tools import fetch_teachers
from tests import test_models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Server:
  """Serves `files` on 127.0.0.1 with Range support; records each request's Range header.

  `drop_after=N`: the next response announces the full length, sends N bytes, hangs up.
  `ranges=False`: Range headers are ignored (a plain 200), as some servers do.
  """

  def __init__(self):
    self.files, self.drop_after, self.ranges, self.requests = {}, None, True, []
    state = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_GET(self):  # pylint: disable=invalid-name
        state.requests.append((self.path, self.headers.get("Range")))
        data = state.files.get(self.path)
        if data is None:
          self.send_error(404)
          return
        found = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(found[1]) if found and state.ranges else 0
        if start >= len(data) > 0:
          self.send_error(416)
          return
        self.send_response(206 if found and state.ranges else 200)
        if found and state.ranges:
          self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if state.drop_after is not None:
          body, state.drop_after = body[:state.drop_after], None
        self.wfile.write(body)

      def log_message(self, *args):
        del args

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture(name="server")
def _server():
  server = _Server()
  yield server
  server.httpd.shutdown()
  server.httpd.server_close()


@pytest.fixture(name="pth", scope="module")
def _pth():
  """{(model, num_classes): (bytes of an mdistiller-style .pth, parameter count)}."""
  torch = pytest.importorskip("torch")
  from tests import torch_reference  # pylint: disable=g-import-not-at-top
  result = {}
  for name, classes in (("resnet8", 100), ("resnet20", 100), ("resnet8", 1000)):
    model = torch_reference.MODELS[name](classes)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "epoch": 240}, buffer)
    result[name, classes] = buffer.getvalue(), sum(p.numel() for p in model.parameters())
  return result


@pytest.fixture(name="tiny_tables")
def _tiny_tables(monkeypatch, pth):
  monkeypatch.setattr(fetch_teachers, "CIFAR_TEACHERS", {
      "resnet8": pth["resnet8", 100][1], "resnet20": pth["resnet20", 100][1]})


def _tar(members):
  """A tar holding {name: bytes}; a value of None makes a symlink."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as archive:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      if data is None:
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
      else:
        info.size = len(data)
      archive.addfile(info, None if data is None else io.BytesIO(data))
  return buffer.getvalue()


def _teachers(pth, resnet20=("resnet20", 100), **extra):
  members = {"cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth": pth["resnet8", 100][0],
             "cifar_teachers/README": b"not a teacher: extracted, not checked"}
  if resnet20:
    members["cifar_teachers/resnet20_vanilla/ckpt_epoch_240.pth"] = pth[resnet20][0]
  return _tar(members | extra)


def _run(capsys, *args):
  status = fetch_teachers.main([str(arg) for arg in args])
  out, err = capsys.readouterr()
  return status, out, err


def _assert_one_line_error(status, err, *words):
  assert status == 2
  assert len(err.splitlines()) == 1 and err.startswith("error: "), err
  assert "Traceback" not in err
  for word in words:
    assert word in err, err


def test_tables_match_configs_and_model_counts():
  """The tool's counts are the model zoo's (tests/test_models.py counts them exactly)."""
  assert "download_ckpts/" + fetch_teachers.CIFAR_MEMBER == cifar_common.TEACHER_PATH
  assert {t for t, _ in cifar_common.PAIRS.values()} == set(fetch_teachers.CIFAR_TEACHERS)
  for model_name, count in fetch_teachers.CIFAR_TEACHERS.items():
    assert test_models.PARAM_COUNTS[model_name] == count
  for name, (model_name, count) in fetch_teachers.IMAGENET_TEACHERS.items():
    assert test_models.PARAM_COUNTS[model_name] == count and name.startswith(model_name[9:])


@pytest.mark.usefixtures("tiny_tables")
def test_good_tar_installs_then_is_rechecked_in_place(server, pth, tmp_path, capsys):
  server.files["/t.tar"] = _teachers(pth)
  status, out, err = _run(capsys, "cifar100", f"--url={server.url}/t.tar", f"--root={tmp_path}")
  assert (status, err) == (0, "")
  assert "100%" in out and "MB/s" in out and "installed 2 CIFAR-100 teachers" in out
  assert os.listdir(tmp_path) == ["cifar_teachers"]  # No tar, .part or staging folder left.
  for model in ("resnet8", "resnet20"):
    assert (tmp_path / f"cifar_teachers/{model}_vanilla/ckpt_epoch_240.pth").is_file()
  assert (tmp_path / "cifar_teachers/README").is_file()

  status, out, _ = _run(capsys, "cifar100", f"--url={server.url}/t.tar", f"--root={tmp_path}")
  assert status == 0 and "already holds" in out and len(server.requests) == 1

  os.remove(tmp_path / "cifar_teachers/resnet20_vanilla/ckpt_epoch_240.pth")
  status, _, err = _run(capsys, "cifar100", f"--url={server.url}/t.tar", f"--root={tmp_path}")
  _assert_one_line_error(status, err, "resnet20_vanilla/ckpt_epoch_240.pth is missing",
                         f"remove {tmp_path}/cifar_teachers and run again")
  assert len(server.requests) == 1


@pytest.mark.usefixtures("tiny_tables")
def test_from_file_installs_without_network(pth, tmp_path, capsys):
  (tmp_path / "cifar_teachers.tar").write_bytes(_teachers(pth))
  root = tmp_path / "ckpts"
  status, _, err = _run(capsys, "cifar100", f"--from_file={tmp_path}/cifar_teachers.tar",
                        "--url=http://127.0.0.1:9/unused", f"--root={root}")
  assert (status, err) == (0, "") and os.listdir(root) == ["cifar_teachers"]


@pytest.mark.parametrize("ranges", [True, False])
@pytest.mark.usefixtures("tiny_tables")
def test_dropped_download_resumes(ranges, server, pth, tmp_path, capsys):
  data = _teachers(pth)
  server.files["/t.tar"], server.drop_after = data, len(data) // 2
  status, _, err = _run(capsys, "cifar100", f"--url={server.url}/t.tar", f"--root={tmp_path}")
  _assert_one_line_error(status, err, f"{server.url}/t.tar", "resume", "tar xf")
  assert os.listdir(tmp_path) == ["cifar_teachers.tar.part"]
  assert (tmp_path / "cifar_teachers.tar.part").stat().st_size == len(data) // 2

  server.ranges = ranges  # Without Range support the download restarts from byte 0.
  status, _, err = _run(capsys, "cifar100", f"--url={server.url}/t.tar", f"--root={tmp_path}")
  assert (status, err) == (0, "") and os.listdir(tmp_path) == ["cifar_teachers"]
  assert server.requests[-1][1] == f"bytes={len(data) // 2}-"


@pytest.mark.parametrize("case, words", [
    ("truncated", ["not a complete tar archive"]),
    ("random bytes", ["not a tar archive"]),
    ("wrong architecture", ["resnet20_vanilla/ckpt_epoch_240.pth does not fit resnet20"]),
    ("missing teacher", ["resnet20_vanilla/ckpt_epoch_240.pth is missing"]),
    ("wrong count", ["parameters as resnet20"]),
    ("parent path", ["member '../evil' is not a plain file"]),
    ("symlink", ["member 'cifar_teachers/link' is not a plain"]),
])
@pytest.mark.usefixtures("tiny_tables")
def test_bad_tar_leaves_nothing(case, words, server, pth, tmp_path, capsys, monkeypatch):
  data = {
      "truncated": lambda: _teachers(pth)[:len(_teachers(pth)) * 3 // 5],
      "random bytes": lambda: np.random.default_rng(0).bytes(100_000),
      "wrong architecture": lambda: _teachers(pth, resnet20=("resnet8", 100)),
      "missing teacher": lambda: _teachers(pth, resnet20=None),
      "wrong count": lambda: _teachers(pth),
      "parent path": lambda: _teachers(pth, **{"../evil": b"x"}),
      "symlink": lambda: _teachers(pth, **{"cifar_teachers/link": None}),
  }[case]()
  if case == "wrong count":
    monkeypatch.setitem(fetch_teachers.CIFAR_TEACHERS, "resnet20", 278_325)
  server.files["/t.tar"] = data
  status, _, err = _run(capsys, "cifar100", f"--url={server.url}/t.tar", f"--root={tmp_path}")
  _assert_one_line_error(status, err, f"{server.url}/t.tar", "tar xf", *words)
  assert os.listdir(tmp_path) == []
  assert not (tmp_path.parent / "evil").exists()


def test_http_error_names_the_url(server, tmp_path, capsys):
  status, _, err = _run(capsys, "cifar100", f"--url={server.url}/gone.tar", f"--root={tmp_path}")
  _assert_one_line_error(status, err, f"{server.url}/gone.tar answered HTTP 404")


def test_unreachable_server_cli(tmp_path):
  with socket.socket() as sock:  # A port nobody listens on once closed.
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/cifar_teachers.tar"
  result = subprocess.run(
      [sys.executable, "-m", "kd_jax.tools.fetch_teachers", "cifar100", f"--url={url}",
       f"--root={tmp_path}/ckpts"], cwd=REPO, capture_output=True, text=True, timeout=60,
      check=False)
  _assert_one_line_error(result.returncode, result.stderr, f"cannot download {url}",
                         f"download {url} by hand")
  assert not (tmp_path / "ckpts/cifar_teachers").exists()


@pytest.mark.parametrize("good_hash", [True, False])
def test_imagenet_checks_sha256_prefix(good_hash, server, pth, tmp_path, capsys, monkeypatch):
  data, count = pth["resnet8", 1000]
  prefix = hashlib.sha256(data).hexdigest()[:8] if good_hash else "00000000"
  name = f"resnet8-{prefix}.pth"
  monkeypatch.setattr(fetch_teachers, "IMAGENET_TEACHERS", {name: ("resnet8", count)})
  monkeypatch.setattr(fetch_teachers, "TIMM_TEACHERS", {})  # tests/test_transformers.py
  server.files[f"/models/{name}"] = data
  status, _, err = _run(capsys, "imagenet", f"--url={server.url}/models/", f"--root={tmp_path}")
  if good_hash:
    assert (status, err) == (0, "")
    assert os.listdir(tmp_path) == ["imagenet_teachers"]
    assert os.listdir(tmp_path / "imagenet_teachers") == [name]
    assert _run(capsys, "imagenet", f"--url={server.url}/x/", f"--root={tmp_path}")[0] == 0
    assert len(server.requests) == 1  # Already installed: checked in place, not fetched.
  else:
    _assert_one_line_error(status, err, f"{name} has sha256",
                           f"download {server.url}/models/{name} by hand")
    assert os.listdir(tmp_path) == []


def _micro_detector_pkl(path, drop=None):
  """A detectron2 model-zoo style .pkl of the micro R18 detector (3 classes), random
  arrays under detectron2's names; `drop`: a tensor left out (a mismatched file)."""
  import pickle  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import models  # pylint: disable=g-import-not-at-top
  from kd_jax.detection import detectron2_names  # pylint: disable=g-import-not-at-top
  abstract = nnx.eval_shape(lambda: models.create("faster_rcnn_R18micro_FPN", 3,
                                                  rngs=nnx.Rngs(0)))
  variables, rng = dict(nnx.iter_graph(abstract)), np.random.default_rng(0)
  state = {name: rng.normal(size=detectron2_names.torch_shape(variables[path].shape)).astype(
      np.float32) for name, path in detectron2_names.detectron2_names(abstract).items()
           if name != drop}
  with open(path, "wb") as file:
    pickle.dump({"model": state, "__author__": "test"}, file)
  return state


@pytest.mark.parametrize("intact", [True, False])
def test_coco_installs_detection_weights_that_load_into_their_detector(intact, tmp_path, capsys,
                                                                       monkeypatch):
  """fetch_teachers coco: each file must load into its kd_jax detector by detectron2 name
  (here the micro detector stands in for R101-FPN); a file missing a tensor is one line
  and nothing is installed."""
  source = tmp_path / "source"
  source.mkdir()
  _micro_detector_pkl(source / "teacher.pkl",
                      drop=None if intact else "roi_heads.box_predictor.cls_score.bias")
  monkeypatch.setattr(fetch_teachers, "COCO_FILES",
                      {"teacher.pkl": ("faster_rcnn_R18micro_FPN", "http://unused/teacher.pkl")})
  monkeypatch.setattr(fetch_teachers, "check_detection_weights",
                      _three_classes(fetch_teachers.check_detection_weights))
  status, _, err = _run(capsys, "coco", f"--root={tmp_path}/ckpts", f"--from_file={source}")
  if intact:
    assert (status, err) == (0, "")
    assert os.listdir(tmp_path / "ckpts" / "detection") == ["teacher.pkl"]
  else:
    _assert_one_line_error(status, err, "tensor roi_heads.box_predictor.cls_score.bias is "
                           "missing", "teacher.pkl")
    assert not (tmp_path / "ckpts" / "detection").exists()


def _three_classes(check):
  """check_detection_weights for a 3-class detector (the real files have COCO's 80)."""
  from kd_jax import models  # pylint: disable=g-import-not-at-top
  create = models.create

  def checked(*args):
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(models, "create", lambda name, num_classes, **kw: create(name, 3, **kw))
      return check(*args)
  return checked
