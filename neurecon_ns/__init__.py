"""neurecon-ns: neural implicit surface reconstruction (NeuS, VolSDF, UNISURF) for nerfstudio."""

from neurecon_ns.quiet import install_warning_filters

# first, before numpy, torch or nerfstudio is imported from here: the filters must precede the warnings
install_warning_filters()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from neurecon_ns.errors import install_excepthook  # noqa: E402

install_excepthook()


def _allow_numpy_scalars_in_checkpoints() -> None:
    """nerfstudio's learning-rate schedulers return numpy floats, so its checkpoints hold numpy scalars,
    which `torch.load` (weights-only by default since torch 2.6) refuses: without this, ns-render,
    ns-eval and ns-viewer cannot load a run once its schedule has left its warm-up."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar
    torch.serialization.add_safe_globals(
        [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
        + [type(np.dtype(name)) for name in ("float64", "float32", "int64")]
    )


_allow_numpy_scalars_in_checkpoints()

__version__ = "0.1.0"
