"""Triton kernels of diffaccel and their launchers (installed as ``diffaccel.kernels``).

Import this package only after TRITON_INTERPRET is set the way you want it: Triton decides at
decoration time whether ``@triton.jit`` functions run compiled or in the interpreter.
"""
