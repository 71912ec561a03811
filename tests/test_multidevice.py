"""The same run on 1, 4 and 8 (fake CPU) devices gives the same losses (DESIGN §7)."""

import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def test_losses_equal_across_device_counts():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    out = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_check.py")], env=env,
                         capture_output=True, text=True, timeout=600, cwd=os.path.dirname(HERE))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
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
            np.testing.assert_allclose(by_devices[n], one, rtol=2e-5, err_msg=f"{method} on {n} devices")
