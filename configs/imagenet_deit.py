"""DeiT-B taught by RegNetY-16GF on ImageNet: DeiT++ and DeiT (METHODS.md 11).

  python main.py --config=configs/imagenet_deit.py:deit_nd,regnety160_deitb \
      --workdir=runs/in_deitpp --config.data.data_dir=DATA_DIR

arg 'METHOD,PAIR': METHOD deit_nd (DeiT++, the ND authors' run; the default) or deit (the
same run without its ND term), PAIR regnety160_deitb or smoke.

The recipe is the ND authors' ImageNet/DeiT/train.sh with train_launch_distilled.py's
defaults (WangYZ1608/Knowledge-Distillation-via-ND): 300 epochs, batch 2048 (256 per GPU
on 8 GPUs), AdamW betas (0.9, 0.95), weight decay 0.3 on matrices only
(`param_groups_weight_decay`), lr = blr 1e-4 x 2048 / 256 = 8e-4, linear warm-up over 20
epochs then cosine to 1e-6, set every step; drop-path 0.1. Data: timm's
`create_transform` (random resized crop 224 bicubic, flip, RandAugment
rand-m9-mstd0.5-inc1; random erasing 0.25 'pixel', which kd_jax does on the device),
mixup 0.8 / cutmix 1.0 (switch 0.5, one draw per GPU's 256 images), label smoothing 0.1;
evaluation Resize(256, bicubic) + CenterCrop(224). The student (`deit_base_patch16`, a
distilled DeiT-B trained from scratch) is wrapped in EmbTrans, whose init loop re-draws
every Linear of the student and of the head from N(0, 0.01^2) (weights and biases). The
teacher is DeiT's RegNetY-16GF release, frozen in eval mode; its class centres are the
ND authors' `center_emb_train.json`, the teacher's mean embedding per class over the
plain crop + flip pipeline (emb_fea_distribution.py), which kd_jax recomputes.
Loss: CE(class head, mixed targets) + min(1, e/5) 0.5 CE(distillation head, teacher
argmax) + 1.5 ND; evaluation on the mean of both heads.

Student and teacher compute in bfloat16 by default (bfloat16 convolutions and matmuls;
float32 parameters, AdamW state, normalisation, softmax and losses; docs/scale.md): DeiT's
own training code (facebookresearch/deit engine.py), where this student and its RegNetY
teacher come from, runs the student and (in its DistillationLoss) the teacher under
torch.cuda.amp.autocast, float16 mixed precision, of which bfloat16 is the TPU/H100
counterpart (about twice the matmul throughput of TF32). The ND authors' train_launch_distilled.py has no autocast: their run
is float32, `--config.student.dtype=float32 --config.teacher.dtype=float32`. bfloat16's
accuracy against float32 on this recipe is unmeasured. The published DeiT 83.4 is the DeiT
paper's DeiT-B distilled, trained by DeiT's own recipe (0.5 CE + 0.5 hard distillation,
lr 5e-4 x batch/512, weight decay 0.05, 5 warm-up epochs, repeated augmentation), which is
not this recipe: `deit` here is the ablation, DeiT++ without ND.
"""
from configs import imagenet_common

PAIRS = {"regnety160_deitb": ("regnety_160", "deit_base_distilled_patch16_224")}
TEACHER_PATH = "download_ckpts/imagenet_teachers/regnety_160-a5fe301d.pth"
BASES = {
    "deit_nd": dict(name="deit_nd", ce_weight=1.0, kd_weight=0.5, warmup_epochs=5,
                    nd_weight=1.5, head_init="normal_0.01"),
    "deit": dict(name="deit", ce_weight=1.0, kd_weight=0.5, warmup_epochs=5),
}


def get_config(arg="deit_nd,regnety160_deitb"):
  base, _, pair = arg.rpartition(",") if "," in arg else ("deit_nd", "", arg)
  if base not in BASES:
    raise ValueError(f"unknown DeiT method {base!r}; valid: {', '.join(BASES)}")
  if pair not in ("smoke", *PAIRS):
    raise ValueError(f"unknown pair {pair!r}; valid: smoke, {', '.join(PAIRS)}")
  config = imagenet_common.get_base(BASES[base], "smoke" if pair == "smoke" else "res34_res18")
  config.optim.update(dict(name="adamw", lr=1e-4 * 2048 / 256, b1=0.9, b2=0.95, eps=1e-8,
                           weight_decay=0.3, decay_1d=False, schedule="warmup_cosine",
                           warmup_epochs=20, min_lr=1e-6, decay_epochs=()))
  config.augment.update(dict(mixup=0.8, cutmix=1.0, mix_prob=1.0, switch_prob=0.5,
                             smoothing=0.1, mix_group_size=256, erase_prob=0.25))
  config.data.update(dict(train_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic"))
  config.student.update(dict(model=PAIRS["regnety160_deitb"][1], drop_path_rate=0.1,
                             classifier_init="normal_0.01"))
  config.student.dtype = config.teacher.dtype = "bfloat16"  # DeiT's AMP (docstring)
  config.num_epochs, config.batch_size = 300, 2048
  config.source = ("ND authors' ImageNet/DeiT/train.sh, train_launch_distilled.py "
                   "(WangYZ1608/Knowledge-Distillation-via-ND; METHODS.md 11)")
  if pair == "smoke":  # the smoke data and bootstrapped ResNet-18 teacher of imagenet_common
    config.student.model = "deit_micro_distilled_patch16_64"
    config.num_epochs, config.batch_size, config.optim.warmup_epochs = 2, 32, 1
    config.augment.mix_group_size = 16
    config.optim.lr = 1e-3
    return config
  config.teacher.model, config.teacher.checkpoint = PAIRS[pair][0], TEACHER_PATH
  return config
