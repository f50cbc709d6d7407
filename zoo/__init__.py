"""efficient-zoo: efficient vision models with deployment export.

>>> import zoo
>>> model = zoo.create_model("efficientvit_m0", num_classes=10)
>>> zoo.list_models("efficientvit_*")[:2]
['efficientvit_m0', 'efficientvit_m1']
"""

from . import (  # noqa: F401  (importing a family module registers it)
    efficientformer,
    efficientmod,
    efficientnet,
    efficientvit,
    fbnet,
    mobilenetv1,
    mobilenetv2,
    proxylessnas,
    resnet_rs,
    simplenet,
    slab_cswin,
    slab_deit,
    slab_pvt,
    slab_swin,
    sparse,
    spnasnet,
    t2t_vit,
    tinynet,
    vovnet,
)
from .cascade import Cascade, CascadeError, CascadeOutput
from .features import FeatureExtractor, FeatureInfo
from .info import count_macs, count_params, model_info
from .registry import (
    Family,
    Paper,
    PretrainedCfg,
    Reported,
    UnknownModelError,
    create_model,
    get_family,
    list_families,
    list_models,
    load_pretrained,
    qat_settings,
)

__version__ = "0.1.0"

__all__ = [
    "Cascade",
    "CascadeError",
    "CascadeOutput",
    "Family",
    "FeatureExtractor",
    "FeatureInfo",
    "Paper",
    "PretrainedCfg",
    "Reported",
    "UnknownModelError",
    "count_macs",
    "count_params",
    "create_model",
    "get_family",
    "list_families",
    "list_models",
    "load_pretrained",
    "model_info",
    "qat_settings",
]
