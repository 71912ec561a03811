"""Offline default: scikit-learn's handwritten digits, MNIST split lists (DESIGN §6).

Command:
    python -m gradmix_jax.train --config configs/digits.py --workdir runs/digits

Measured (2-core shared CPU, whole command timed with /usr/bin/time; seed 0, k-NN k=3 on encoder
features). Target was AUROC >= 0.98; NOT reached on split 0. The recipe beats raw pixels on every
split, but by less than the seed-to-seed spread (see below):

    split            0       1       2       3       4     mean
    AUROC          0.9669  0.9826  0.9661  0.9712  0.9744  0.9722
    closed acc     0.9916  0.9916  0.9889  0.9944  0.9888
    wall (s)        121     192*    124     114     124    (*another job was sharing the CPU)
    raw pixels     0.9544  0.9806  0.9459  0.9407  0.9525  0.9548   (L2-normalised 64-d pixels, k=3)

Re-run of this file on split 0 with three seeds (idle 2-core CPU, 2026-11-26, whole command):
seed 0: 0.9684 (126 s), seed 1: 0.9331 (122 s), seed 2: 0.9575 (120 s); mean 0.953, i.e. at the
raw-pixel level (0.9544) on average. The seed spread (~0.035) is larger than any recipe effect found.
With the later train-step code (objectives refactor, same day) seed 0 gave 0.9528 (128 s).
On one H100 (bfloat16 activations via model.dtype='auto', jax 0.11.2) seed 0 gave 0.9648 / closed
acc 0.9861, 58 s for the whole command (4.7 s of it training).

Tried on split 0 (ResNet18; "gm" = GradMix; AUROC / closed-set acc with encoder features, k=3;
train-step cost; rows marked (c) came from an in-process script that runs the same train step and
evaluates part-way through, so the step numbers are positions inside a cosine schedule of 600 (or
2000) steps):

    old default: 16px w16 T=0.1 gm, 300 steps (whole cmd)  0.9619 / 0.989   525 s whole command
    (c) 8px w16 T=0.1 gm 600, preset aug                   0.9625 / 0.983   ~300-370 ms/step
    (c)  + gentle crop (0.8,1) ratio (0.9,1.1)             0.9317 / 0.986   (acc up, AUROC down)
    (c)  + strong crop (0.3,1) rot 15 noise 0.05           0.9603 / 0.994   (still rising)
    (c) 8px w16 T=0.2 gm 600                               0.9669 / 0.992   ~290 ms/step (= this file)
    (c) 16px w8  T=0.2 gm 600                              0.9579 / 0.992   ~330 ms/step
    (c) 8px w16 T=0.2 no mixing 600                        0.9666 / 0.992   ~95 ms/step
    (c)   same, seed=1                                     0.9271 / 0.994   (seed spread ~0.04!)
    (c)   same, 2000 steps                                 0.9291 / 0.989   (0.944 at step 500)
    (c)   supcon_weight 0.3                                0.9465 / 0.989
    (c)   strong aug as above                              0.9533 / 0.989
    (c)   lr 3e-4 (min 1e-5)                               0.9268 / 0.978
    (c)   T=0.5                                            0.9266 / 0.989
    (c)   width 32                                         0.9465 / 0.983   ~540 ms/step
    (c)   batch 256                                        0.9039 / 0.992   ~220 ms/step
    projection features instead of encoder: always lower (T=0.2: 0.92; T=0.5: 0.57)
    k=5 instead of 3: within +-0.005 of k=3 on most rows

Why: 16x16 input (4x the pixels) costs 2-5x per step and was no better. Longer schedules do worse.
Of the temperatures tried, 0.2 was best. Gentle crops raised closed-set accuracy but lowered
AUROC. Differences smaller than ~0.04 between single runs are within seed noise, so none of the
rows above is clearly better than another; only the time/cost numbers are firm.
"""

from gradmix_jax.config_base import get_base_config


def get_config():
    c = get_base_config()
    c.data.protocol = "digits"
    c.data.image_size = 8  # native resolution: 16x16 at width 8 or 16 was no better and 2-5x slower
    c.augment.preset = "digits"
    c.model.width = 16
    c.batch_size = 128
    c.num_epochs = 0
    c.num_steps = 600  # AUROC peaks early; 2000 steps (no mixing) fell to ~0.93 (over-fits knowns)
    c.temperature = 0.2
    # At 8x8 the taps are 8/4/2/1 px; conv5_2 is 1x1, its min-max-normalised map is constant 0 and
    # adds nothing to the heat map, so it is left out (same result as including it).
    c.gradmix.layers = ("conv3_2", "conv4_2")
    c.eval.features = "encoder"
    c.log_every_steps = 50
    c.checkpoint_every_steps = 600
    return c
