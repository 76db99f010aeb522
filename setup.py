"""The one compiled part: the decoder step in C (handler/florence/runtime/native), loaded with ctypes.

Optional: where it does not compile, `pip install` goes on and the service runs its TorchScript step.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "handler.florence.runtime.native._decoder_step",
            sources=["handler/florence/runtime/native/decoder_step.c"],
            extra_compile_args=["-O3", "-std=gnu11", "-fno-strict-aliasing"],
            libraries=["m"],
            optional=True,
        )
    ]
)
