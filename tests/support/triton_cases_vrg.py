"""VRG kernels for tests/support/triton_compile.py (compiled for real GPUs without one)."""


def cases():
    from diffaccel.kernels import vrg as V

    out = []
    for dt in ("fp32", "fp16", "bf16"):
        out.append(("vrg_error_moments", dt, V._error_moments_kernel,
                    {"pred_ptr": f"*{dt}", "target_ptr": f"*{dt}", "partial_ptr": "*fp64",
                     "D": "i64", "CHUNK": "i64"},
                    {"BLOCK": V.MOMENT_BLOCK}))
    out.append(("vrg_moments_finish", "", V._moments_finish_kernel,
                {"partial_ptr": "*fp64", "bins_ptr": "*i64", "table_ptr": "*fp64", "B": "i32",
                 "NS": "i32"},
                {"BLOCK_B": V.FINISH_BLOCK}))
    for solver in (0, 1):
        for with_grad in (False, True):
            out.append(("vrg_cumulative_error", f"solver={solver},with_grad={with_grad}",
                        V._cumulative_error_kernel,
                        {"abar_ptr": "*fp64", "grid_ptr": "*fp64", "mse_ptr": "*fp64",
                         "cpe_ptr": "*fp64", "grad_ptr": "*fp64", "K": "i32", "N": "i32",
                         "M": "i32"},
                        {"SOLVER": solver, "WITH_GRAD": with_grad, "ITERS": 10,
                         "BLOCK_K": V.CPE_BLOCK_K, "BLOCK_N": 16}))
    return out
