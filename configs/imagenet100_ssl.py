"""ImageNet100 self-supervised pre-training for the linear probe of the paper's Table 6 (App. G,
Table 9): SimCLR (or MoCo v1 with ``--config.objective=moco``), ResNet18 with the ImageNet stem,
224x224 images, output dimension 128, 100 epochs, batch 256; the mixing method is
``mixing.method`` (GradMix by default; none / mixup / cutmix for the other rows).

Data: ImageNet100 = the 100 ImageNet classes of CMC's list (``gradmix_jax/data/imagenet100.txt``),
from an ImageNet folder (``train/<wnid>/`` and ``val/<wnid>/`` under data.data_dir, or under
data.data_dir/imagenet100 or data.data_dir/imagenet) or from TFDS ``imagenet2012`` prepared in
array_record format there; 126,689 training and 5,000 validation images (the counts published for
this subset). Decoded at 224 px the training split is about 19 GB, above data.device_budget_mb, so
it streams: Grain decodes and resizes on the host (data.num_threads threads, data.num_workers
processes), each process its shard of every batch.

Command:
    python -m gradmix_jax.train --config configs/imagenet100_ssl.py --workdir runs/in100_simclr \
        --config.data.data_dir=/path/to/imagenet
    python -m experiments.table6_ssl_linear_probe --dataset imagenet100 --out runs/table6 \
        --archs resnet18 --set data.data_dir=/path/to/imagenet   # the 8 cells of Table 6, probed

Run time: not measured (no ImageNet run has been made with this project yet). 100 epochs are 49,400
steps of 256 images (12.7 M images). The train step at 224 px with the ImageNet stem has not been
timed on a GPU either; scaled by forward FLOPs from the H100 bfloat16 GradMix figure at 64x64 (6,208
images/s, docs/performance.md), an estimate, not a measurement, is about 7,500 images/s, i.e. about
30 minutes of steps, if the host decodes that fast: JPEG decoding at 224 px needs many host cores
(docs/performance.md, "The streaming input path"), so expect the input to set the pace.

Paper (Table 6, ResNet18 linear probe, Acc@1 / Acc@5): SimCLR 48.10 / 75.78, + GradMix
54.80 / 81.36; MoCo 40.31 / 66.54, + GradMix 47.75 / 72.37. Measured with this config: not run yet.
"""

from gradmix_jax.training.config_base import get_base_config


def get_config():
    c = get_base_config()
    c.objective = "simclr"  # Table 6 trains SimCLR and MoCo v1 (objective='moco')
    c.data.protocol = "imagenet100"
    c.data.closed_set = True  # all 100 classes; the probe reads the labels, SSL does not
    c.data.image_size = 224
    c.data.num_threads = 32
    c.model.name = "resnet18"
    c.model.stem = "imagenet"
    c.model.feature_dim = 128
    c.batch_size = 256
    c.num_epochs = 100  # Table 9
    c.moco.queue_size = 4096  # App. G
    c.moco.momentum = 0.999
    c.eval.id_samples = 0  # TwoNN on ImageNet features is not part of Table 6
    c.checkpoint_every_steps = 500  # about one epoch (494 steps)
    c.log_every_steps = 100
    return c
