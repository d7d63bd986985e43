"""neurecon-ns: neural implicit surface reconstruction (NeuS, VolSDF, UNISURF) for nerfstudio."""

from neurecon_ns.errors import install_excepthook

install_excepthook()

__version__ = "0.1.0"
