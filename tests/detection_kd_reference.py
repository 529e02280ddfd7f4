"""PyTorch transcriptions of the ND authors' detection distillation code, test references.

From WangYZ1608/Knowledge-Distillation-via-ND, Detection/model/utils.py (DirectNormLoss,
KDLoss, dkd_loss) and Detection/model/reviewkd.py (ABF, ReviewKD, hcl; the same as
dvlab-research/ReviewKD Detection/model/kd_trans.py), written out to run without
detectron2 or CUDA. Inputs are the concatenated *valid* RoIs of a batch, NCHW maps.
"""
import torch
import torch.nn.functional as F
from torch import nn


def direct_norm_loss(s_emb, t_emb, centers, labels, nd_weight=1.0):
  """DirectNormLoss.forward: sum_i (1 - <s, c/|c|> / max(|s|, |t|)) * weight / len(labels)."""
  loss = 0.0
  for s, t, i in zip(s_emb, t_emb, labels):
    center = centers[int(i)]
    e_c = center / center.norm(p=2)
    max_norm = max(s.norm(p=2), t.norm(p=2))
    loss += 1 - torch.dot(s, e_c) / max_norm
  return loss * nd_weight / len(labels)


def kd_loss(s_out, t_out, kd_weight=1.0, temperature=1.0):
  """KDLoss.forward: batchmean KL of the tempered softmaxes x T^2 x weight."""
  return F.kl_div(F.log_softmax(s_out / temperature, dim=1),
                  F.softmax(t_out / temperature, dim=1),
                  reduction="batchmean") * temperature * temperature * kd_weight


def _cat_mask(t, mask1, mask2):
  return torch.cat([(t * mask1).sum(dim=1, keepdims=True), (t * mask2).sum(1, keepdims=True)], 1)


def dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature):
  """dkd_loss of Detection/model/utils.py (size_average=False is reduction='sum')."""
  gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
  other_mask = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()
  pred_student = _cat_mask(F.softmax(logits_student / temperature, dim=1), gt_mask, other_mask)
  pred_teacher = _cat_mask(F.softmax(logits_teacher / temperature, dim=1), gt_mask, other_mask)
  tckd = (F.kl_div(torch.log(pred_student), pred_teacher, reduction="sum")
          * temperature**2 / target.shape[0])
  pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
  log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
  nckd = (F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
          * temperature**2 / target.shape[0])
  return alpha * tckd + beta * nckd


class ABF(nn.Module):
  def __init__(self, in_channel, mid_channel, out_channel, fuse):
    super().__init__()
    self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
                               nn.BatchNorm2d(mid_channel))
    self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1,
                                         padding=1, bias=False),
                               nn.BatchNorm2d(out_channel))
    self.att_conv = (nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid())
                     if fuse else None)

  def forward(self, x, y=None):
    n, _, h, w = x.shape
    x = self.conv1(x)
    if self.att_conv is not None:
      y = F.interpolate(y, x.shape[-2:], mode="nearest")
      z = self.att_conv(torch.cat([x, y], dim=1))
      x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
    return self.conv2(x), x


class ReviewKD(nn.Module):
  """build_kd_trans: five ABFs 256 -> 256 -> 256, the deepest (p6) without fusion."""

  def __init__(self, channels=256, levels=5):
    super().__init__()
    abfs = nn.ModuleList(ABF(channels, channels, channels, idx < levels - 1)
                         for idx in range(levels))
    self.abfs = abfs[::-1]

  def forward(self, student_features):
    x = student_features[::-1]
    out_features, res_features = self.abfs[0](x[0])
    results = [out_features]
    for features, abf in zip(x[1:], self.abfs[1:]):
      out_features, res_features = abf(features, res_features)
      results.insert(0, out_features)
    return results


def hcl(fstudent, fteacher):
  loss_all = 0.0
  for fs, ft in zip(fstudent, fteacher):
    _, _, h, _ = fs.shape
    loss = F.mse_loss(fs, ft, reduction="mean")
    cnt, tot = 1.0, 1.0
    for size in [4, 2, 1]:
      if size >= h:
        continue
      cnt /= 2.0
      loss += F.mse_loss(F.adaptive_avg_pool2d(fs, (size, size)),
                         F.adaptive_avg_pool2d(ft, (size, size)), reduction="mean") * cnt
      tot += cnt
    loss_all = loss_all + loss / tot
  return loss_all


def emb_fea_distribution(batches):
  """RCNNKD.emb_fea_distribution over [(t_emb [N, d], labels [N]), ...], then its final
  division and 4-decimal rounding: {str(label): mean feature list}."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  emb, num_cls = {}, {}
  for t_emb, labels in batches:
    for feature, label in zip(t_emb, labels):
      key = str(int(label))
      if key in emb:
        emb[key] = (np.array(emb[key]) + np.asarray(feature)).tolist()
        num_cls[key] += 1
      else:
        emb[key] = [np.asarray(feature).tolist()]
        num_cls[key] = 1
  return {key: np.round(np.array(value) / num_cls[key], 4).tolist()[0]
          for key, value in emb.items()}
