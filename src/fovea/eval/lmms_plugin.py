"""lmms-eval's entry point (group ``lmms_eval.models``): ``lmms-eval --model fovea --model_args
pretrained=DIR`` evaluates any checkpoint fovea loads. Kept import-light on purpose: lmms-eval reads
every plugin inside one ``try``, so a slow or failing import here would hide all plugins."""

from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(model_id="fovea", simple_class_path="fovea.eval.lmms_model.FoveaLMM")
