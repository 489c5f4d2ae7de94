"""``import diffaccel`` alone registers every op's schema, fake and Triton implementation (for
the op and its ``_triton`` twin), and loads neither the Triton kernels nor the extension.

Checked in a fresh interpreter: in this one, other tests have imported diffaccel.sampling,
diffaccel.vrg, ... already (``sample_step``'s fake and Triton kernels were once registered only
by ``import diffaccel.sampling``)."""
import json
import subprocess
import sys

from support import ROOT

OPS = ("philox_uint32", "noise", "stroke_blur", "stroke_blur_backward", "stroke_noise",
       "sample_step", "sample_step_out", "vrg_error_moments", "vrg_cumulative_error",
       "vrg_cumulative_error_grad")

_PROBE = r"""
import json, sys
import torch
import diffaccel
from torch._library.simple_registry import singleton

report = {}
for name in sorted(diffaccel.library.SCHEMAS):
    for qualname in diffaccel.library.qualnames(name):
        entry = singleton.find(qualname)
        fake = entry.fake_impl.kernel is not None
        has = {key: torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)
               for key in ("CPU", "CUDA")}
        report[qualname] = {"fake": fake, **has}
loaded = sorted(m for m in sys.modules if m == "diffaccel._C" or m.startswith("diffaccel.kernels")
                or m in ("diffaccel.sampling", "diffaccel.vrg"))
print(json.dumps({"ops": report, "loaded": loaded}))
"""


def test_import_diffaccel_registers_every_op():
    r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    ops = out["ops"]
    expected = {f"diffaccel::{name}{suffix}" for name in OPS for suffix in ("", "_triton")}
    assert set(ops) == expected, sorted(set(ops) ^ expected)
    for qualname, entry in ops.items():
        assert entry["fake"], f"{qualname}: no fake function after `import diffaccel`"
        if qualname.endswith("_triton"):
            # the Triton implementations are registered for CPU (interpreter) and CUDA tensors
            assert entry["CPU"] and entry["CUDA"], f"{qualname}: no Triton implementation"
        else:
            # the C++ kernels come with the extension, which import diffaccel does not load
            assert not entry["CPU"] and not entry["CUDA"], f"{qualname}: kernels before the extension"
    # import stays light: no Triton kernel module, no extension, no subpackage (Triton itself
    # may be imported by torch.library, so it is not checked here)
    assert out["loaded"] == [], out["loaded"]
