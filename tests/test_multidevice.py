"""The same run on 1, 4 and 8 (fake CPU) devices gives the same losses (data parallelism over a Mesh)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def test_losses_equal_across_device_counts(run_on_fake_devices):
    result = run_on_fake_devices("multidevice_check.py", 8)
    axis = result.pop("axis_name")
    # Contrastive losses with axis_name inside pmap / shard_map equal the global-batch loss.
    np.testing.assert_allclose(axis["supcon_pmap"], [axis["supcon_global"]] * 4, rtol=1e-5)
    np.testing.assert_allclose(axis["simclr_pmap"], [axis["simclr_global"]] * 4, rtol=1e-5)
    np.testing.assert_allclose(axis["supcon_shard_map"], axis["supcon_global"], rtol=1e-5)
    np.testing.assert_allclose(axis["grad_shard_map"], axis["grad_global"], rtol=1e-4, atol=1e-6)
    for method, by_devices in result.items():
        one = np.array(by_devices["1"])
        assert np.all(np.isfinite(one))
        for n in ("4", "8"):
            np.testing.assert_allclose(
                by_devices[n], one, rtol=2e-5, err_msg=f"{method} on {n} devices"
            )


def test_gradmix_step_on_4_devices_equals_1_device(run_on_fake_devices):
    """The docs' GradMix step with cross-device BatchNorm (tests/gradmix_pmap_check.py): 4 devices
    x 2 samples under jax.pmap and under jax.shard_map against 1 device x 8 samples, same draws."""
    result = run_on_fake_devices("gradmix_pmap_check.py", 4)
    assert result.pop("devices") == 4
    one = {k: np.asarray(v) for k, v in result.pop("one").items()}
    grad = one["grads_pmean"]  # 1 device: pmean, psum and the returned gradient are the same
    close = dict(rtol=1e-5, atol=1e-5)
    same = [k for k in one if k.startswith(("act_", "heat", "mixed", "masked", "batch_stats_"))]
    for run, got in result.items():
        got = {k: np.asarray(v) for k, v in got.items()}
        for name in same:  # activations, maps, mixed views, BatchNorm statistics on every device
            want = np.repeat(one[name], 4, 0) if name.endswith("per_device") else one[name]
            np.testing.assert_allclose(got[name], want, **close, err_msg=f"{run}: {name}")
        assert np.array_equal(got["masked"], one["masked"]), run  # the same boxes
        np.testing.assert_allclose(got["loss"], np.repeat(one["loss"], 4), **close, err_msg=run)
        # The documented reduction: pmean gives the 1-device gradient, psum 4 times it.
        np.testing.assert_allclose(got["grads_pmean"], grad, **close, err_msg=run)
        np.testing.assert_allclose(got["grads_psum"], 4 * grad, **close, err_msg=run)

    pmap, smap = result["pmap"], result["shard_map"]
    # pmap (a shard_map with check_vma=False): each device differentiates its own copy of the
    # parameters and every device's cotangent counts the (replicated) loss of all 4 devices, so
    # the per-device gradients are partial and sum to 4 times the 1-device one, and the tap
    # gradients are 4 times the 1-device ones (the min-max normalised maps above do not see it).
    per_device = np.asarray(pmap["grads_per_device"])
    np.testing.assert_allclose(per_device.sum(0), 4 * grad, **close)
    assert np.abs(per_device - grad).max() > 1e-2
    # shard_map (check_vma=True): the replicated parameters' gradient comes back already summed
    # over the devices, on every device the 1-device gradient (so pmean leaves it as it is), and
    # the tap gradients are the 1-device ones.
    np.testing.assert_allclose(smap["grads_per_device"], np.repeat(grad[None], 4, 0), **close)
    for name in (k for k in one if k.startswith("tap_grad")):
        np.testing.assert_allclose(pmap[name], 4 * one[name], **close, err_msg=name)
        np.testing.assert_allclose(smap[name], one[name], **close, err_msg=name)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env_with(devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    ).strip()
    return env


def _two_processes(workdir, args):
    """The train CLI with ``args`` as 2 processes x 2 CPU devices (jax.distributed over
    localhost) in ``workdir``; returns its results.json."""
    root = os.path.dirname(HERE)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                *args,
                "--workdir",
                str(workdir),
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            env=_env_with(2),
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert (
        "open-set AUROC" in outs[0][0] and "open-set AUROC" not in outs[1][0]
    )  # process 0 reports
    return json.loads((workdir / "results.json").read_text())


def _two_processes_then_one(tmp_path, args, single_args=()):
    """Runs the train CLI with ``args`` as 2 processes x 2 CPU devices and as 1 process x 4
    devices (plus ``single_args``); returns both results.json."""
    root = os.path.dirname(HERE)
    a = _two_processes(tmp_path / "multi", args)
    single = subprocess.run(
        [sys.executable, *args, *single_args, "--workdir", str(tmp_path / "single")],
        env=_env_with(4),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    b = json.loads((tmp_path / "single" / "results.json").read_text())
    assert a["num_devices"] == b["num_devices"] == 4
    return a, b


def _cli_args(config, *extra):
    return ["-m", "gradmix_jax.train", "--config", config, "--config.progress_bar=False", *extra]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """2 processes x 2 CPU devices (jax.distributed over localhost) = 1 process x 4 devices."""
    config = os.path.join(os.path.dirname(HERE), "configs", "digits.py")
    args = _cli_args(config, "--config.num_steps=4", "--config.model.width=4",
                     "--config.data.image_size=8", "--config.batch_size=32",
                     "--config.checkpoint_every_steps=2")  # fmt: skip
    a, b = _two_processes_then_one(tmp_path, args)
    np.testing.assert_allclose(a["final_train_loss"], b["final_train_loss"], rtol=1e-5)
    np.testing.assert_allclose(a["auroc"], b["auroc"], atol=1e-6)
    assert (tmp_path / "multi" / "checkpoints" / "4").is_dir()


@pytest.mark.slow
def test_two_processes_stream_an_image_folder(tmp_path):
    """An image folder over the device budget, streamed by 2 processes (each reading only its
    rows of every batch and of every evaluation batch), trains and evaluates as one process
    with the whole split on its devices."""
    from test_streaming import LAYOUT, write_image_folder

    folder = write_image_folder(tmp_path / "images", LAYOUT)
    config = os.path.join(os.path.dirname(HERE), "configs", "digits.py")
    args = _cli_args(config, "--config.data.protocol=imagefolder",
                     f"--config.data.data_dir={folder}", "--config.augment.preset=rgb",
                     "--config.num_steps=4", "--config.model.width=4",
                     "--config.data.image_size=8", "--config.batch_size=8",
                     "--config.eval.batch_size=8", "--config.data.num_threads=2",
                     "--config.checkpoint_every_steps=2", "--config.data.device_budget_mb=0.001")  # fmt: skip
    a, b = _two_processes_then_one(tmp_path, args, ["--config.data.pipeline=device"])
    assert a["input_pipeline"] == "stream" and b["input_pipeline"] == "device"
    np.testing.assert_allclose(a["final_train_loss"], b["final_train_loss"], rtol=1e-5)
    np.testing.assert_allclose(a["auroc"], b["auroc"], atol=1e-6)
    assert a["num_test_unknown"] == 8
    # Lose what followed the step-2 checkpoint, as a kill would: both processes resume there.
    multi = tmp_path / "multi"
    (multi / "results.json").unlink()
    shutil.rmtree(multi / "checkpoints" / "4")
    c = _two_processes(multi, args)
    assert c["resumed_from_step"] == 2 and c["input_pipeline"] == "stream"
    np.testing.assert_allclose(c["final_train_loss"], a["final_train_loss"], rtol=1e-6)
    np.testing.assert_allclose(c["auroc"], a["auroc"], atol=1e-6)
