"""Fused-step kernels for tests/support/triton_compile.py (compiled for real GPUs without one)."""


def step_signature(dt):
    """Argument types of ``_sample_step_kernel`` with tensors of Triton type ``dt`` (e.g. "fp32")."""
    sig = {name: f"*{dt}" for name in ["x_ptr", "out_ptr", "z_ptr", "probes_ptr", "probes_out_ptr"]
           + [f"m{i}" for i in range(8)] + [f"w{i}" for i in range(8)]}
    sig.update({"coef_ptr": "*fp32", "seeds_ptr": "*i64", "partial_ptr": "*fp32", "B": "i32",
                "D": "i32", "CHUNK": "i32", "offset": "i64", "probe_offset": "i64", "P": "i32",
                "P_out": "i32", "W": "i32",
                "ycoef_ptr": "*fp32", "y_out_ptr": f"*{dt}", "clip": "fp32"})
    return sig


def cases():
    from diffaccel.kernels import step as S

    out = []
    for dt, K, hutch, y in (("fp32", 2, True, False), ("fp16", 8, True, False), ("bf16", 1, False, False),
                            ("fp32", 1, False, True), ("bf16", 3, False, True)):
        sig = step_signature(dt)
        ykw = {"Y": y, "Y_OUT": y, "CLIP": y}  # all named: triton_compile.py sets no defaults
        out.append(("sample_step", f"{dt},K={K},hutch={hutch}" + (",y" if y else ""), S._sample_step_kernel,
                    sig, {"K": K, "DIST": 0, "HAS_Z": False, "TRACK": True, "HUTCH": hutch,
                          "PROBE_DIST": 3, "PER_SAMPLE": True, "BLOCK": 1024, **ykw}))
    for track_var in (True, False):
        out.append(("step_finish", f"track_var={track_var}", S._step_finish_kernel,
                    {"partial_ptr": "*fp32", "coef_ptr": "*fp32", "logp_ptr": "*fp64",
                     "var_ptr": "*fp64", "NS": "i32", "P": "i32", "W": "i32", "ycoef_ptr": "*fp32",
                     "YW": "i32"},
                    {"TRACK_VAR": track_var, "BLOCK_S": S.SPLIT_BLOCK, "Y": not track_var}))
    return out
