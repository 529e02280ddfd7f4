"""KD, DKD, CTKD and MLKD with logit standardization (Sun et al. CVPR 2024) on CIFAR-100 (METHODS.md 3b).

  python main.py --config=configs/cifar_ls.py:kd,res32x4_res8x4 --workdir=runs/kdls_res32x4_res8x4

Both sides' logits are z-scored per sample before the KD term. The authors' code
(sunshangquan/logit-standardization-KD, tools/train.py) runs the KD term at T = base_temp
with weight W, and for DKD multiplies *both* alpha and beta by W: KD+LS = 0.1 CE +
W KD(T); DKD+LS = CE + warm-up(20) (W TCKD + W beta NCKD)(T). The published runs use
per-pair (T, W[, beta]), read from their log file names `logs/<KD|DKD>/<kd|dkd>,TEACHER,
STUDENT,T,W[,BETA].txt`; pairs without a log keep the command-line defaults T = 2,
W = 9 (and DKD's beta of configs/cifar_dkd.py). CTKD+LS is their CTKD/ copy of the CTKD
code (`scripts/run_cifar_distill.sh`: `-r 0.1 -a 9 -b 0 --kd_T 2`, global temperature):
0.1 CE + W KD(T learnt), both sides z-scored. That code ignores `--kd_T` once the
temperature is learnt, yet the logs (`logs/CTKD/ctkd,TEACHER,STUDENT,2,9.txt`) hold the
learnt T at 2.00-2.07 from epoch 3 on: the run's floor was the base temperature, so
t_start = T here, t_end 20 as their code (their epoch-1 T of 22-30 exceeds 2 + 20: a wider
range was used, which only matters in the first two epochs). Their flag is inverted
(`DistillKL() if opt.logit_stand else DistillKL_logit_stand()`): the script, without
`--logit_stand`, standardizes. Three of the log files hold two 240-epoch runs appended.
MLKD+LS = MLKD (configs/cifar_mlkd.py) with the KD terms on z-scored logits at T_cfg = T
and every distillation weight W (LS's tools/train.py sets KD.TEMPERATURE and
KD.LOSS.KD_WEIGHT), on the schedule of LS's own MLKD configs.
arg: 'kd,PAIR', 'dkd,PAIR', 'ctkd,PAIR' or 'mlkd,PAIR' (PAIR from
configs/cifar_common.PAIRS or 'smoke').
"""
from configs import cifar_common, cifar_ctkd, cifar_dkd, cifar_mlkd

# pair -> (T, W): logs/KD/kd,<teacher>,<student>,T,W.txt
KD_LS = {
    "res56_res20": (2.0, 9.0),
    "res110_res32": (2.0, 9.0),
    "res32x4_res8x4": (2.0, 9.0),
    "wrn40_2_wrn16_2": (2.0, 9.0),
    "wrn40_2_wrn40_1": (2.0, 9.0),
    "vgg13_vgg8": (3.0, 9.0),
    "vgg13_mv2": (3.0, 9.0),
    "res50_mbv2": (3.0, 1.0),
    "res32x4_shuv2": (2.0, 9.0),
    "res110_res20": (4.0, 12.0),
    "res32x4_wrn16_2": (3.0, 9.0),
    "res32x4_wrn40_2": (3.0, 9.0),
    "wrn40_2_res8x4": (2.0, 9.0),
    "wrn40_2_mv2": (3.0, 9.0),
}
# pair -> (T, W, BETA): logs/DKD/dkd,<teacher>,<student>,T,W[,BETA].txt; BETA None where
# the name has none: the pair's DKD config beta applies (8.0 for both such logs).
DKD_LS = {
    "res56_res20": (3.0, 18.0, 2.0),
    "res110_res32": (2.0, 15.0, 2.0),
    "res32x4_res8x4": (2.0, 9.0, None),
    "wrn40_2_wrn16_2": (2.0, 12.0, 2.0),
    "wrn40_2_wrn40_1": (2.0, 12.0, 2.0),
    "vgg13_vgg8": (2.0, 15.0, 2.0),
    "vgg13_mv2": (3.0, 9.0, 2.0),
    "res50_mbv2": (2.0, 15.0, 2.0),
    "res32x4_shuv2": (2.0, 9.0, None),
    "res110_res20": (2.0, 15.0, 2.0),
    "res32x4_wrn16_2": (2.0, 9.0, 2.0),
    "res32x4_wrn40_2": (2.0, 9.0, 8.0),
    "wrn40_2_res8x4": (2.0, 18.0, 2.0),
    "wrn40_2_mv2": (2.0, 15.0, 2.0),
}
# pair -> (T, W): logs/CTKD/ctkd,<teacher>,<student>,T,W.txt (T: the learnt T's floor)
CTKD_LS = {
    "res56_res20": (2.0, 9.0),
    "res110_res32": (2.0, 9.0),
    "res32x4_res8x4": (2.0, 9.0),
    "wrn40_2_wrn16_2": (2.0, 9.0),
    "wrn40_2_wrn40_1": (2.0, 9.0),
    "vgg13_vgg8": (2.0, 9.0),
    "vgg13_mv2": (2.0, 9.0),
    "res50_mbv2": (2.0, 9.0),
    "res32x4_shuv2": (2.0, 9.0),
    "res110_res20": (2.0, 9.0),
    "res32x4_wrn16_2": (2.0, 9.0),
    "res32x4_wrn40_2": (2.0, 9.0),
    "wrn40_2_res8x4": (2.0, 9.0),
    "wrn40_2_mv2": (2.0, 9.0),
}
# pair -> (T, W, log): logs/MLKD/<log>; the log names abbreviate some models (res110,
# res50, mv2), so the file is named in full. res56_res20 and wrn40_2_mv2 are in the README
# table without a log: they keep the defaults, as the shuv1 pairs the table lacks.
MLKD_LS = {
    "res110_res32": (2.0, 9.0, "mlkd,res110,res32,2,9.txt"),
    "res32x4_res8x4": (2.0, 9.0, "mlkd,resnet32x4,resnet8x4,2,9.txt"),
    "wrn40_2_wrn16_2": (2.0, 9.0, "mlkd,wrn_40_2,wrn_16_2,2,9.txt"),
    "wrn40_2_wrn40_1": (2.0, 9.0, "mlkd,wrn_40_2,wrn_40_1,2,9.txt"),
    "vgg13_vgg8": (2.0, 6.0, "mlkd,vgg13,vgg8,2,6.txt"),
    "vgg13_mv2": (2.0, 6.0, "mlkd,vgg13,MobileNetV2,2,6.txt"),
    "res50_mbv2": (2.0, 9.0, "mlkd,res50,mv2,2,9.txt"),
    "res32x4_shuv2": (2.0, 6.0, "mlkd,resnet32x4,ShuffleV2,2,6.txt"),
    "res110_res20": (2.0, 9.0, "mlkd,res110,res20,2,9.txt"),
    "res32x4_wrn16_2": (2.0, 9.0, "mlkd,resnet32x4,wrn_16_2,2,9.txt"),
    "res32x4_wrn40_2": (2.0, 9.0, "mlkd,resnet32x4,wrn_40_2,2,9.txt"),
    "wrn40_2_res8x4": (2.0, 9.0, "mlkd,wrn_40_2,resnet8x4,2,9.txt"),
}
DEFAULT_T, DEFAULT_W = 2.0, 9.0  # tools/train.py --base-temp / --kd-weight defaults
_REPO = "sunshangquan/logit-standardization-KD"


def _log_name(kind, config, values):
  """The log file a pair's setting comes from, or why it has none."""
  if values is None:
    return f"{_REPO}: no published log for this pair; its defaults T 2, W 9"
  teacher, student = config.teacher.model, config.student.model
  temperature, weight, *beta = values
  numbers = f"{temperature:g},{weight:g}" + "".join(f",{b:.1f}" for b in beta if b is not None)
  return f"{_REPO} logs/{kind.upper()}/{kind},{teacher},{student},{numbers}.txt"


def get_config(arg="kd,res32x4_res8x4"):
  base, _, pair = arg.partition(",")
  if base == "kd":
    config = cifar_common.get_base(dict(name="kd", ce_weight=0.1, kd_weight=DEFAULT_W,
                                        temperature=DEFAULT_T, standardize=True))
    config = cifar_common.for_pair(config, pair)
    values = KD_LS.get(pair)
    if values:
      config.method.temperature, config.method.kd_weight = values
  elif base == "dkd":
    config = cifar_dkd.get_config(pair)
    values = DKD_LS.get(pair)
    temperature, weight, beta = values or (DEFAULT_T, DEFAULT_W, None)
    beta = config.method.beta if beta is None else beta
    config.method.update(dict(temperature=temperature, alpha=weight * config.method.alpha,
                              beta=weight * beta, standardize=True))
  elif base == "ctkd":
    config = cifar_ctkd.get_config(f"kd,{pair}")
    values = CTKD_LS.get(pair)
    temperature, weight = values or (DEFAULT_T, DEFAULT_W)
    config.method.update(dict(kd_weight=weight, t_start=temperature, standardize=True))
  elif base == "mlkd":
    values = MLKD_LS.get(pair)
    temperature, weight, log = values or (DEFAULT_T, DEFAULT_W, None)
    config = cifar_mlkd.get_config(pair, cifar_mlkd.LS_SCHEDULES, temperature=temperature,
                                   kd_weight=weight, standardize=True)
    if pair != "smoke":
      schedule = cifar_mlkd.LS_SCHEDULES[pair][2].removeprefix(_REPO + " ")
      setting = (f"{_REPO} logs/MLKD/{log}" if log
                 else f"{_REPO}: no published log for this pair; its defaults T 2, W 9")
      config.source = f"{setting}; schedule {schedule}"
    return config
  else:
    raise ValueError(f"unknown base {base!r}; valid: kd, dkd, ctkd, mlkd")
  if pair != "smoke":
    config.source = _log_name(base, config, values)
  return config
