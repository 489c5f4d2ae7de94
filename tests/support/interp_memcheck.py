"""A bounds check for Triton kernels run in the interpreter (TRITON_INTERPRET=1): every load and
store lane that its mask leaves on must address bytes inside the storage of one of the launch's
tensor arguments. On a GPU such a read past a tensor faults once it crosses the end of a memory
segment; the interpreter reads host memory and never notices (compute-sanitizer's memcheck is the
GPU-side check). Use ``with bounds_checked() as bad: ...; assert not bad``."""
import contextlib

import numpy as np


@contextlib.contextmanager
def bounds_checked():
    from triton.runtime import interpreter as I

    ranges = []   # [(lo, hi)] byte ranges of the current launch's tensor storages
    bad = []      # "load/store: n lanes out of bounds" per offending access

    orig_init = I.GridExecutor._init_args_hst
    orig_load = I.InterpreterBuilder.create_masked_load
    orig_store = I.InterpreterBuilder.create_masked_store

    def init(self, args_dev, kwargs):
        args_hst, kwargs_hst = orig_init(self, args_dev, kwargs)
        ranges.clear()
        for a in list(args_hst) + list(kwargs_hst.values()):
            if hasattr(a, "untyped_storage"):
                st = a.untyped_storage()
                ranges.append((st.data_ptr(), st.data_ptr() + st.nbytes()))
        return args_hst, kwargs_hst

    def check(kind, ptrs, mask):
        addr = np.asarray(ptrs.data, dtype=np.uint64).ravel()
        on = np.broadcast_to(np.asarray(mask.data, dtype=bool), ptrs.data.shape).ravel()
        size = np.dtype(I._get_np_dtype(ptrs.get_element_ty())).itemsize
        ok = ~on
        for lo, hi in ranges:
            ok |= (addr >= lo) & (addr + size <= hi)
        if not ok.all():
            bad.append(f"{kind}: {int((~ok).sum())} of {int(on.sum())} active lanes out of bounds")

    def load(self, ptrs, mask, other, *args):
        check("load", ptrs, mask)
        return orig_load(self, ptrs, mask, other, *args)

    def store(self, ptrs, value, mask, *args):
        check("store", ptrs, mask)
        return orig_store(self, ptrs, value, mask, *args)

    I.GridExecutor._init_args_hst = init
    I.InterpreterBuilder.create_masked_load = load
    I.InterpreterBuilder.create_masked_store = store
    try:
        yield bad
    finally:
        I.GridExecutor._init_args_hst = orig_init
        I.InterpreterBuilder.create_masked_load = orig_load
        I.InterpreterBuilder.create_masked_store = orig_store
