from .core.bundle import ModelBundle
from ._format import AAMModelDirectoryFormat
from .plugin_setup import plugin


@plugin.register_transformer
def _1(ff: AAMModelDirectoryFormat) -> ModelBundle:
    # Only JSON, TSV and safetensors are read: nothing in the artifact is executed.
    return ModelBundle.load(str(ff.path))


@plugin.register_transformer
def _2(bundle: ModelBundle) -> AAMModelDirectoryFormat:
    ff = AAMModelDirectoryFormat()
    bundle.save(str(ff.path))
    return ff
